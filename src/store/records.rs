//! A record as an auditor opens it: the versions an amendment replaced,
//! what each changed, and the flags raised on it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::body::RecordBody;
use super::flags::{FLAG_COLUMNS, FlagRow};
use super::{Store, StoreError, row};
use crate::domain::{FlagView, RecordId};

/// One version of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordVersionEntry {
    /// Its number, from 1.
    pub version: i32,
    /// Why the hospital amended the record (none for the first version).
    pub reason: Option<String>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The fields (dotted paths of the stored body) that differ from the
    /// version before; empty for the first.
    pub changed: Vec<String>,
}

impl Store {
    /// Every version of record `id`, oldest first, the current one last;
    /// empty when there is no such record.
    pub async fn record_versions(
        &self,
        id: RecordId,
    ) -> Result<Vec<RecordVersionEntry>, StoreError> {
        let mut conn = self.acquire().await?;
        let Some(current) = row::current_versions(&mut conn, &[id.0]).await?.pop() else {
            return Ok(Vec::new());
        };
        let archived = sqlx::query!(
            r#"SELECT version, reason, recorded_at, body AS "body: Value"
               FROM record_versions WHERE record_id = $1 ORDER BY version"#,
            id.0
        )
        .fetch_all(&mut *conn)
        .await?;
        let current_body: Value =
            serde_json::from_str(&RecordBody::text(&current.record)).unwrap_or(Value::Null);
        let versions = archived
            .into_iter()
            .map(|v| (v.version, v.reason, v.recorded_at, v.body))
            .chain(std::iter::once((
                current.version,
                current.reason,
                current.recorded_at,
                current_body,
            )));
        let mut entries = Vec::new();
        let mut before: Option<BTreeMap<String, Value>> = None;
        for (version, reason, recorded_at, body) in versions {
            let fields = flatten(&body);
            let changed = before
                .as_ref()
                .map(|b| changed_fields(b, &fields))
                .unwrap_or_default();
            entries.push(RecordVersionEntry {
                version,
                reason,
                recorded_at,
                changed,
            });
            before = Some(fields);
        }
        Ok(entries)
    }

    /// The flags raised on record `id`, newest first.
    pub async fn flags_of_record(&self, id: RecordId) -> Result<Vec<FlagView>, StoreError> {
        let sql = format!("{FLAG_COLUMNS} WHERE f.record_id = $1 ORDER BY f.id DESC");
        let rows: Vec<FlagRow> = sqlx::query_as(&sql)
            .bind(id.0)
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        rows.into_iter().map(FlagRow::into_view).collect()
    }
}

/// A JSON body as dotted paths to its leaves.
fn flatten(body: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", body, &mut out);
    out
}

/// The paths whose values differ between two flattened bodies.
fn changed_fields(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
) -> Vec<String> {
    let mut paths: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect();
    paths.dedup();
    paths.sort();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_by_path() {
        let a = flatten(&serde_json::json!({"organ": "KIDNEY", "donor": {"age": 40, "abo": "O"}}));
        let b = flatten(
            &serde_json::json!({"organ": "KIDNEY", "donor": {"age": 41, "abo": "O"}, "x": 1}),
        );
        assert_eq!(changed_fields(&a, &b), vec!["donor.age", "x"]);
        assert!(changed_fields(&a, &a).is_empty());
    }
}
