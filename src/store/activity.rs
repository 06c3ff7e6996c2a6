//! Clinic activity in SQL: applying a transaction's counter changes in one
//! statement, and reading a clinic's months or a country's year back.

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::domain::CountryCode;
use crate::domain::activity::{ActivityDelta, Bucket, Counter, CounterValue};

use super::{Store, StoreError};

/// Adds `delta` to the counters, in one statement, the rows in one fixed
/// order: concurrent writers of the same clinic's month queue on its rows
/// until they commit, and taking them in one order means they never wait
/// on each other in a cycle. Called last before a commit, so those rows are
/// held as briefly as can be.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    delta: &ActivityDelta,
) -> Result<(), StoreError> {
    if delta.is_empty() {
        return Ok(());
    }
    let mut clinic_id = Vec::new();
    let mut month = Vec::new();
    let mut country = Vec::new();
    let mut metric = Vec::new();
    let mut dimension = Vec::new();
    let mut by = Vec::new();
    for (bucket, counter, n) in delta.changes() {
        let (m, d) = counter.parts();
        clinic_id.push(bucket.clinic_id.as_str());
        month.push(bucket.month);
        country.push(bucket.procedure_country.as_str());
        metric.push(m);
        dimension.push(d);
        by.push(n);
    }
    sqlx::query!(
        "INSERT INTO clinic_activity AS a (clinic_id, month, procedure_country, metric, dimension, n)
         SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::text[],
                              $6::bigint[]) AS d(clinic_id, month, procedure_country, metric,
                                                 dimension, n)
         ORDER BY clinic_id, month, procedure_country, metric, dimension
         ON CONFLICT (clinic_id, month, procedure_country, metric, dimension)
         DO UPDATE SET n = a.n + excluded.n",
        &clinic_id as &[&str],
        &month,
        &country as &[&str],
        &metric as &[&str],
        &dimension,
        &by,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Where a flag's record counts, read inside the transaction that changes it.
pub(crate) async fn bucket_of_record(
    conn: &mut PgConnection,
    record_id: i64,
) -> Result<Bucket, StoreError> {
    let row = sqlx::query!(
        "SELECT clinic_id, procedure_country, transplanted_at FROM records WHERE id = $1",
        record_id
    )
    .fetch_one(conn)
    .await?;
    Ok(Bucket {
        clinic_id: row.clinic_id,
        month: crate::domain::activity::month_of(row.transplanted_at),
        procedure_country: parse_country(&row.procedure_country)?,
    })
}

fn parse_country(raw: &str) -> Result<CountryCode, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("country {raw:?}")))
}

fn counter(metric: &str, dimension: &str) -> Result<Counter, StoreError> {
    Counter::from_parts(metric, dimension).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Whether the registry or any stored record knows `clinic_id`: an
    /// unregistered clinic with transplants has activity to read.
    pub async fn clinic_known(&self, clinic_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.acquire().await?;
        let known = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM clinics WHERE clinic_id = $1)
                   OR EXISTS (SELECT 1 FROM clinic_activity WHERE clinic_id = $1) AS "known!""#,
            clinic_id
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(known)
    }

    /// The counters of `clinic_id` for the months in `[from, until]`
    /// (first days of months), summed over procedure countries, by month.
    pub async fn clinic_activity(
        &self,
        clinic_id: &str,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<CounterValue>, StoreError> {
        let mut conn = self.acquire().await?;
        let rows = sqlx::query!(
            r#"SELECT month, metric, dimension, sum(n)::bigint AS "n!"
               FROM clinic_activity
               WHERE clinic_id = $1 AND month BETWEEN $2 AND $3
               GROUP BY month, metric, dimension
               HAVING sum(n) <> 0
               ORDER BY month"#,
            clinic_id,
            from,
            until,
        )
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(CounterValue {
                    clinic_id: clinic_id.to_owned(),
                    month: r.month,
                    counter: counter(&r.metric, &r.dimension)?,
                    n: r.n,
                })
            })
            .collect()
    }

    /// The counters of every clinic with transplants in `country` for the
    /// months in `[from, until]`, by clinic and month.
    pub async fn country_activity(
        &self,
        country: CountryCode,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<CounterValue>, StoreError> {
        let mut conn = self.acquire().await?;
        let rows = sqlx::query!(
            r#"SELECT clinic_id, month, metric, dimension, n
               FROM clinic_activity
               WHERE procedure_country = $1 AND month BETWEEN $2 AND $3 AND n <> 0
               ORDER BY clinic_id, month"#,
            country.as_str(),
            from,
            until,
        )
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(CounterValue {
                    clinic_id: r.clinic_id,
                    month: r.month,
                    counter: counter(&r.metric, &r.dimension)?,
                    n: r.n,
                })
            })
            .collect()
    }
}
