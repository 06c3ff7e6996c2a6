//! What auditors investigate with: records searched by party and time, the
//! records of a batch of parties (for the network walk), flag summaries,
//! and the access log (written in batches, listed).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use crate::domain::FlagStatus;
use crate::domain::network::{Party, RecordLinks};
use crate::domain::search::{AccessEntry, AccessFilter, FlagSummary, RecordCursor, RecordFilter};

use super::body::parse;
use super::chain;
use super::flags::Actor;
use super::ingest::severity_from_db;
use super::ledger::content;
use super::{Store, StoreError};

/// The records one page of a record search holds, newest transplant first.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// The records' ids.
    pub ids: Vec<i64>,
    /// Where the page stopped, when more may follow.
    pub next: Option<RecordCursor>,
}

/// One page of the access log, newest first.
#[derive(Debug, Clone)]
pub struct AccessPage {
    /// The entries.
    pub entries: Vec<AccessEntry>,
    /// The last id of the page when more may follow.
    pub next_before: Option<i64>,
}

/// One read to write to the access log: what kind of thing, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// record, flag, case, search, network or export.
    pub resource: &'static str,
    /// Its id, or the call's filter or origin.
    pub resource_id: String,
}

impl Read {
    /// A read of `resource` `id`.
    pub fn of(resource: &'static str, id: impl ToString) -> Self {
        Self {
            resource,
            resource_id: id.to_string(),
        }
    }
}

/// Adds `WHERE` conditions selecting the records `filter` lets through.
fn push_record_filter(q: &mut QueryBuilder<'_, Postgres>, filter: &RecordFilter) {
    q.push(" WHERE true");
    if let Some(donor) = &filter.donor {
        q.push(" AND r.donor_fp = ")
            .push_bind(donor.as_bytes().to_vec());
    }
    if let Some(recipient) = &filter.recipient {
        q.push(" AND r.recipient_fp = ")
            .push_bind(recipient.as_bytes().to_vec());
    }
    if let Some(clinic) = &filter.clinic_id {
        q.push(" AND r.clinic_id = ").push_bind(clinic.clone());
    }
    if let Some(hospital) = &filter.hospital_id {
        q.push(" AND r.hospital_id = ").push_bind(hospital.clone());
    }
    if let Some(country) = filter.procedure_country {
        q.push(" AND r.procedure_country = ")
            .push_bind(country.to_string());
    }
    if let Some(organ) = filter.organ {
        q.push(" AND r.organ = ").push_bind(organ.as_str());
    }
    if let Some(kind) = filter.donor_type {
        q.push(" AND r.donor_type = ").push_bind(kind.as_str());
    }
    if let Some(nationality) = filter.donor_nationality {
        q.push(" AND r.donor_nationality = ")
            .push_bind(nationality.to_string());
    }
    if let Some(non_resident) = filter.non_resident_donor {
        q.push(" AND r.donor_non_resident = ")
            .push_bind(non_resident);
    }
    if let Some(non_resident) = filter.non_resident_recipient {
        q.push(" AND r.recipient_non_resident = ")
            .push_bind(non_resident);
    }
    if let Some(after) = filter.transplanted_after {
        q.push(" AND r.transplanted_at >= ").push_bind(after);
    }
    if let Some(before) = filter.transplanted_before {
        q.push(" AND r.transplanted_at < ").push_bind(before);
    }
    if let Some(open) = filter.has_open_flags {
        q.push(if open {
            " AND EXISTS"
        } else {
            " AND NOT EXISTS"
        });
        q.push(
            " (SELECT 1 FROM flags f WHERE f.record_id = r.id \
             AND f.status IN ('OPEN', 'IN_REVIEW'))",
        );
    }
}

#[derive(sqlx::FromRow)]
struct Found {
    id: i64,
    transplanted_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LinkRow {
    id: i64,
    transplanted_at: DateTime<Utc>,
    donor_fp: Vec<u8>,
    recipient_fp: Vec<u8>,
    clinic_id: String,
    hospital_id: String,
}

impl LinkRow {
    fn into_links(self) -> RecordLinks {
        RecordLinks {
            id: self.id,
            transplanted_at: self.transplanted_at,
            donor: hex::encode(&self.donor_fp),
            recipient: hex::encode(&self.recipient_fp),
            clinic: self.clinic_id,
            hospital: self.hospital_id,
        }
    }
}

/// A party's key as the database holds it: fingerprints as bytes.
fn fingerprint_bytes(hex_key: &str) -> Option<Vec<u8>> {
    hex::decode(hex_key).ok().filter(|b| b.len() == 32)
}

impl Store {
    /// The ids of the records matching `filter` after `after` in the order
    /// newest transplant first (ties: highest id first), at most `limit`.
    pub async fn search_page(
        &self,
        filter: &RecordFilter,
        after: Option<RecordCursor>,
        limit: i64,
    ) -> Result<SearchPage, StoreError> {
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new("SELECT r.id, r.transplanted_at FROM records r");
        push_record_filter(&mut q, filter);
        if let Some(c) = after {
            q.push(" AND (r.transplanted_at, r.id) < (")
                .push_bind(c.transplanted_at)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        // The page size as a literal: a generic plan with `LIMIT $n`
        // assumes a tenth of the table is wanted (see `list_flags`).
        q.push(format_args!(
            " ORDER BY r.transplanted_at DESC, r.id DESC LIMIT {}",
            limit + 1
        ));
        let mut found: Vec<Found> = q
            .build_query_as()
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        let next = if found.len() as i64 > limit {
            found.truncate(usize::try_from(limit).unwrap_or(0));
            found.last().map(|f| RecordCursor {
                transplanted_at: f.transplanted_at,
                id: f.id,
            })
        } else {
            None
        };
        Ok(SearchPage {
            ids: found.iter().map(|f| f.id).collect(),
            next,
        })
    }

    /// The flags of these records, oldest first per record; only those
    /// OPEN or IN_REVIEW when `open_only`.
    pub async fn flag_summaries(
        &self,
        record_ids: &[i64],
        open_only: bool,
    ) -> Result<HashMap<i64, Vec<FlagSummary>>, StoreError> {
        let rows = sqlx::query!(
            "SELECT id, record_id, rule_id, severity, status FROM flags
             WHERE record_id = ANY($1)
               AND (NOT $2 OR status IN ('OPEN', 'IN_REVIEW'))
             ORDER BY record_id, id",
            record_ids,
            open_only,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        let mut by_record: HashMap<i64, Vec<FlagSummary>> = HashMap::new();
        for r in rows {
            by_record.entry(r.record_id).or_default().push(FlagSummary {
                id: r.id,
                record_id: r.record_id,
                rule_id: r.rule_id,
                severity: severity_from_db(r.severity)?,
                status: parse::<FlagStatus>(&r.status)?,
            });
        }
        Ok(by_record)
    }

    /// A record's id and parties, if it exists.
    pub async fn record_links(&self, record_id: i64) -> Result<Option<RecordLinks>, StoreError> {
        let row = sqlx::query_as!(
            LinkRow,
            "SELECT id, transplanted_at, donor_fp, recipient_fp, clinic_id, hospital_id
             FROM records WHERE id = $1",
            record_id,
        )
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(row.map(LinkRow::into_links))
    }

    /// The records of each of `parties`, at most `limit` of each, newest
    /// transplant first; one query for the whole batch. A record of two
    /// parties may come twice.
    pub async fn records_of_parties(
        &self,
        parties: &[Party],
        limit: usize,
    ) -> Result<Vec<RecordLinks>, StoreError> {
        let mut donors = Vec::new();
        let mut recipients = Vec::new();
        let mut clinics = Vec::new();
        let mut hospitals = Vec::new();
        for p in parties {
            match p {
                Party::Donor(k) => donors.extend(fingerprint_bytes(k)),
                Party::Recipient(k) => recipients.extend(fingerprint_bytes(k)),
                Party::Clinic(k) => clinics.push(k.clone()),
                Party::Hospital(k) => hospitals.push(k.clone()),
            }
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Each party reads its own index in order and stops at `limit`:
        // a hospital with 10^5 records costs no more than one with 10.
        let rows = sqlx::query_as!(
            LinkRow,
            r#"SELECT r.id AS "id!", r.transplanted_at AS "transplanted_at!",
                      r.donor_fp AS "donor_fp!", r.recipient_fp AS "recipient_fp!",
                      r.clinic_id AS "clinic_id!", r.hospital_id AS "hospital_id!"
               FROM unnest($1::bytea[]) AS p(fp) CROSS JOIN LATERAL (
                   SELECT id, transplanted_at, donor_fp, recipient_fp, clinic_id, hospital_id
                   FROM records WHERE donor_fp = p.fp
                   ORDER BY transplanted_at DESC, id DESC LIMIT $5) r
               UNION ALL
               SELECT r.id, r.transplanted_at, r.donor_fp, r.recipient_fp, r.clinic_id, r.hospital_id
               FROM unnest($2::bytea[]) AS p(fp) CROSS JOIN LATERAL (
                   SELECT id, transplanted_at, donor_fp, recipient_fp, clinic_id, hospital_id
                   FROM records WHERE recipient_fp = p.fp
                   ORDER BY transplanted_at DESC, id DESC LIMIT $5) r
               UNION ALL
               SELECT r.id, r.transplanted_at, r.donor_fp, r.recipient_fp, r.clinic_id, r.hospital_id
               FROM unnest($3::text[]) AS p(c) CROSS JOIN LATERAL (
                   SELECT id, transplanted_at, donor_fp, recipient_fp, clinic_id, hospital_id
                   FROM records WHERE clinic_id = p.c
                   ORDER BY transplanted_at DESC, id DESC LIMIT $5) r
               UNION ALL
               SELECT r.id, r.transplanted_at, r.donor_fp, r.recipient_fp, r.clinic_id, r.hospital_id
               FROM unnest($4::text[]) AS p(h) CROSS JOIN LATERAL (
                   SELECT id, transplanted_at, donor_fp, recipient_fp, clinic_id, hospital_id
                   FROM records WHERE hospital_id = p.h
                   ORDER BY transplanted_at DESC, id DESC LIMIT $5) r"#,
            &donors,
            &recipients,
            &clinics,
            &hospitals,
            limit,
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        Ok(rows.into_iter().map(LinkRow::into_links).collect())
    }

    /// Records that `actor` read these things through `action`: one
    /// access-log entry each, written together, each with its ledger MAC.
    pub async fn record_reads(
        &self,
        actor: &Actor<'_>,
        action: &str,
        reads: &[Read],
    ) -> Result<(), StoreError> {
        if reads.is_empty() {
            return Ok(());
        }
        let at = chain::now();
        let mut resources = Vec::with_capacity(reads.len());
        let mut ids = Vec::with_capacity(reads.len());
        let mut macs = Vec::with_capacity(reads.len());
        for read in reads {
            let entry = content::Access {
                at,
                principal: actor.principal,
                key_id: actor.key_id,
                action,
                resource: read.resource,
                resource_id: &read.resource_id,
                trace_id: actor.trace_id,
                own_trace_id: actor.own_trace_id,
            };
            macs.push(self.ledger.mac(&entry.input()).to_vec());
            resources.push(read.resource.to_owned());
            ids.push(read.resource_id.clone());
        }
        // Committed without waiting for the WAL to reach the disk: that
        // wait was most of a read's tail (p99 3 ms of a 5 ms budget at
        // 10^7 records). The entries are visible, and the read answered,
        // once committed; only a crash of the database itself within the
        // WAL writer's delay (3 x 200 ms at most) can lose them. A sealed
        // entry is never lost: the block's own commit is synchronous and
        // flushes the WAL, which holds this commit before it.
        sqlx::query!(
            "INSERT INTO access_log (at, principal, key_id, action, resource, resource_id,
                                     trace_id, own_trace_id, ledger_mac)
             SELECT $1, $2, $3, $4, u.resource, u.resource_id, $5, $6, u.mac
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS durability,
                  unnest($7::text[], $8::text[], $9::bytea[]) WITH ORDINALITY
                  AS u(resource, resource_id, mac, n)
             ORDER BY u.n",
            at,
            actor.principal,
            actor.key_id,
            action,
            actor.trace_id,
            actor.own_trace_id,
            &resources,
            &ids,
            &macs,
        )
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }

    /// Access-log entries matching `filter` with ids below `before`, newest first.
    pub async fn access_log(
        &self,
        filter: &AccessFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<AccessPage, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT id, at, principal, key_id, action, resource, resource_id, trace_id,
                    own_trace_id
             FROM access_log WHERE true",
        );
        let text_filters = [
            ("principal", &filter.principal),
            ("key_id", &filter.key_id),
            ("action", &filter.action),
            ("resource", &filter.resource),
            ("resource_id", &filter.resource_id),
        ];
        for (column, value) in text_filters {
            if let Some(value) = value {
                q.push(format_args!(" AND {column} = "))
                    .push_bind(value.clone());
            }
        }
        if let Some(after) = filter.after {
            q.push(" AND at >= ").push_bind(after);
        }
        if let Some(until) = filter.before {
            q.push(" AND at < ").push_bind(until);
        }
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(format_args!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let mut entries: Vec<AccessRow> = q
            .build_query_as()
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        let next_before = if entries.len() as i64 > limit {
            entries.truncate(usize::try_from(limit).unwrap_or(0));
            entries.last().map(|e| e.id)
        } else {
            None
        };
        Ok(AccessPage {
            entries: entries
                .into_iter()
                .map(|r| AccessEntry {
                    id: r.id,
                    at: r.at,
                    principal: r.principal,
                    key_id: r.key_id,
                    action: r.action,
                    resource: r.resource,
                    resource_id: r.resource_id,
                    trace_id: r.trace_id,
                    own_trace_id: r.own_trace_id,
                })
                .collect(),
            next_before,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AccessRow {
    id: i64,
    at: DateTime<Utc>,
    principal: String,
    key_id: String,
    action: String,
    resource: String,
    resource_id: String,
    trace_id: Option<String>,
    own_trace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Fingerprint, Organ};

    #[test]
    fn every_value_is_bound_and_closed_sets_too() {
        let filter = RecordFilter {
            donor: Some(Fingerprint([1; 32])),
            clinic_id: Some("C' OR true --".into()),
            organ: Some(Organ::Kidney),
            has_open_flags: Some(false),
            ..RecordFilter::default()
        };
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT 1 FROM records r");
        push_record_filter(&mut q, &filter);
        assert_eq!(
            q.sql(),
            "SELECT 1 FROM records r WHERE true AND r.donor_fp = $1 AND r.clinic_id = $2 \
             AND r.organ = $3 AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.record_id = r.id \
             AND f.status IN ('OPEN', 'IN_REVIEW'))"
        );
    }
}
