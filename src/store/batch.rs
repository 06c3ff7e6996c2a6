//! Batch ingest in a few statements, whatever the batch's size: its
//! idempotency lookups, its record ids, its records (each row its current
//! version), and its flags each take one round trip.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::encode::{Encode, IsNull};
use sqlx::postgres::PgArgumentBuffer;

use crate::domain::chain::GENESIS;
use crate::domain::{Clinic, Fingerprint, Person, Record, RecordElements, RecordId};
use crate::rules::{ClinicWindow, Finding, PriorDonation};

use super::context::{self, WindowRequest};
use super::ingest::{ExistingRecord, IngestTx, StoredAck, hla_json, kind_columns};
use super::ledger::content::RecordState;
use super::steps::{self, Raise};
use super::{StoreError, chain};
use crate::domain::ledger::RowMac;

/// What a batch needs of a record's stored form (its pseudonymised body as
/// JSON text): the text's SHA-256, the record's content hash; and its
/// federation elements, which the content hash leaves out (a new
/// federation key changes them, not the record).
#[derive(Debug, Clone)]
pub struct StoredForm {
    /// SHA-256 of the stored body.
    pub hash: Vec<u8>,
    /// The donor's and the recipient's elements, when this registry has a
    /// federation key.
    pub elements: Option<RecordElements>,
}

impl StoredForm {
    /// The stored form of a pseudonymised record with its elements.
    pub fn of(record: &Record, elements: Option<RecordElements>) -> Self {
        Self {
            hash: super::body::RecordBody::hash(record),
            elements,
        }
    }

    /// The elements as the row's MAC covers them.
    pub(crate) fn element_bytes(&self) -> (Option<&[u8]>, Option<&[u8]>) {
        super::ingest::element_bytes(self.elements.as_ref())
    }
}

/// A record to store as version 1 under an id allocated for it.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// Its allocated id.
    pub id: RecordId,
    /// Its allocated place in the ledger's sequence.
    pub seq: i64,
    /// The pseudonymised record.
    pub record: &'a Record,
    /// Its stored form.
    pub form: &'a StoredForm,
}

/// A finding to store as a flag of a record stored in this transaction.
#[derive(Debug, Clone, Copy)]
pub struct NewFlag<'a> {
    /// The flagged record's id.
    pub record_id: RecordId,
    /// The flagged record.
    pub record: &'a Record,
    /// What the rule found.
    pub finding: &'a Finding,
}

impl IngestTx {
    /// The stored records under these idempotency keys (hospital, record id).
    pub async fn find_existing_many(
        &mut self,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<(String, String), ExistingRecord>, StoreError> {
        let (hospitals, externals): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let rows = sqlx::query!(
            "SELECT r.hospital_id, r.external_record_id, r.id, r.version, r.content_hash,
                    r.received_at
             FROM unnest($1::text[], $2::text[]) AS k(hospital_id, external_record_id)
             JOIN records r USING (hospital_id, external_record_id)",
            &hospitals as &[&str],
            &externals as &[&str],
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let existing = ExistingRecord {
                    id: RecordId(r.id),
                    version: r.version,
                    content_hash: r.content_hash,
                    received_at: r.received_at,
                };
                ((r.hospital_id, r.external_record_id), existing)
            })
            .collect())
    }

    /// Takes the locks of `records`' keys (as [`IngestTx::lock_keys`]
    /// does), then one new record id and one place in the ledger's sequence
    /// for each, both ascending, in one statement: the locks are an init
    /// plan, held before the first id is drawn. Ids drawn under the locks
    /// are above every id of a record the rules read: any writer of those
    /// keys has committed already. The identity's sequence is looked up
    /// once, in an init plan of its own: per row, the lookup cost five
    /// times the `nextval`.
    pub async fn lock_and_allocate(
        &mut self,
        records: &[&Record],
    ) -> Result<Vec<(RecordId, i64)>, StoreError> {
        let n = i32::try_from(records.len())
            .map_err(|_| StoreError::Corrupt("batch too large".into()))?;
        let (keys, exclusive) = super::ingest::lock_order(records.iter().copied());
        let rows = sqlx::query!(
            r#"SELECT nextval((SELECT pg_get_serial_sequence('records', 'id')::regclass)) AS "id!",
                      nextval('ledger_seq') AS "seq!"
               FROM generate_series(1, $3)
               WHERE (SELECT count(*)
                      FROM unnest($1::bigint[], $2::bool[]) AS k(key, exclusive),
                           LATERAL (SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                                                ELSE pg_advisory_xact_lock_shared(k.key) END) AS l
                     ) >= 0"#,
            &keys,
            &exclusive,
            n,
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let (mut ids, mut seqs): (Vec<i64>, Vec<i64>) =
            rows.into_iter().map(|r| (r.id, r.seq)).unzip();
        ids.sort_unstable();
        seqs.sort_unstable();
        Ok(ids.into_iter().map(RecordId).zip(seqs).collect())
    }

    /// What the rules read for a batch, as stored before it: the current
    /// registry entries of its clinics (unregistered ones absent), every
    /// record of its donors with an id below `before` (by donor, oldest
    /// first) and its clinic windows (in the order asked).
    ///
    /// Called before this transaction writes anything and while it holds the
    /// batch's locks, so a read on another connection sees exactly what it
    /// would. Idle pool connections, when there are any, take the donor and
    /// window statements while the transaction reads the clinics, so the
    /// three run at once: this is inside the critical section every batch
    /// meeting these keys waits on. A busy pool is never waited for (batches
    /// holding a connection each and waiting for a second could starve one
    /// another), and a read that fails on an idle connection (one a database
    /// restart left broken) is run again here: either way the transaction
    /// reads what is missing itself.
    pub async fn context(
        &mut self,
        clinic_ids: &[&str],
        donors: &[Fingerprint],
        before: RecordId,
        requests: &[WindowRequest<'_>],
    ) -> Result<BatchContext, StoreError> {
        let donors_beside = self.pool.try_acquire();
        let windows_beside = if requests.is_empty() {
            None
        } else {
            self.pool.try_acquire()
        };
        let histories_beside = async move {
            let mut conn = donors_beside?;
            beside(context::donor_histories(&mut conn, donors, before).await)
        };
        let windows_beside = async move {
            let mut conn = windows_beside?;
            beside(context::clinic_windows(&mut conn, requests).await)
        };
        let (clinics, histories, windows) = tokio::join!(
            super::registry::current_clinics(&mut self.tx, clinic_ids),
            histories_beside,
            windows_beside,
        );
        let clinics = clinics?;
        let histories = match histories {
            Some(histories) => histories,
            None => context::donor_histories(&mut self.tx, donors, before).await?,
        };
        let windows = match windows {
            Some(windows) => windows,
            None => context::clinic_windows(&mut self.tx, requests).await?,
        };
        Ok((clinics, histories, windows))
    }

    /// Stores `records` as version 1, each row holding its version's chain
    /// entry, in one `COPY … FROM STDIN (FORMAT binary)`: no executor work
    /// per row, and rows written a page at a time. `None` when a concurrent
    /// writer took one of their idempotency keys first (the copy then fails
    /// on the unique constraint): the transaction must be rolled back, as
    /// the batch's rules counted that record as new.
    pub async fn insert_new(
        &mut self,
        records: &[NewRecord<'_>],
    ) -> Result<Option<Vec<StoredAck>>, StoreError> {
        let recorded_at = chain::now();
        let mut rows = CopyRows::new();
        for n in records {
            let chain_head = self.chain.link(
                &GENESIS,
                &chain::version_content(n.id.0, 1, &n.form.hash, None, recorded_at),
            );
            let state = RecordState {
                id: n.id,
                version: 1,
                seq: n.seq,
                prev: None,
                received_at: recorded_at,
                amended_at: None,
                content_hash: &n.form.hash,
                reason: None,
                recorded_at,
                chain_head: &chain_head,
                elements: n.form.element_bytes(),
            };
            let mac = self.ledger.mac(&state.input());
            row_of(&mut rows, n, (&chain_head, &mac), recorded_at)?;
        }
        let mut copy = self.tx.copy_in_raw(COPY_RECORDS).await?;
        copy.send(rows.finish()).await?;
        match copy.finish().await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("records_idempotency") => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        for n in records {
            self.activity.record_stored(n.record);
        }
        // `records` is in id order (ids are drawn ascending), as acks are.
        Ok(Some(
            records
                .iter()
                .map(|n| StoredAck {
                    id: n.id,
                    version: 1,
                    received_at: recorded_at,
                })
                .collect(),
        ))
    }

    /// Stores findings on records stored in this transaction as new flags,
    /// each with its RAISED step, in one statement.
    pub async fn insert_flags(&mut self, flags: &[NewFlag<'_>]) -> Result<(), StoreError> {
        let raises: Vec<Raise<'_>> = flags
            .iter()
            .map(|f| Raise {
                record_id: f.record_id,
                record_version: 1,
                record: f.record,
                finding: f.finding,
            })
            .collect();
        steps::raise(&mut self.tx, &self.ledger, &raises, "", &mut self.activity).await?;
        Ok(())
    }
}

/// What a read beside the transaction gave, if it worked.
fn beside<T>(read: Result<T, StoreError>) -> Option<T> {
    read.inspect_err(|e| {
        tracing::warn!(error = %e, "a context read beside the transaction failed; reading it inside");
    })
    .ok()
}

/// A batch's context: clinics by id, donor histories by donor, one clinic
/// window per request.
pub type BatchContext = (
    HashMap<String, Clinic>,
    HashMap<Fingerprint, Vec<PriorDonation>>,
    Vec<ClinicWindow>,
);

/// The columns a new record's row is copied into, in the order
/// [`row_of`] writes them.
const COPY_RECORDS: &str = "COPY records (
    id, chain_head, content_hash, hospital_id, external_record_id, clinic_id,
    procedure_country, organ, laterality, procured_at, transplanted_at,
    cold_ischemia_minutes, machine_perfusion, abo_exception,
    donor_fp, donor_type, donor_relation, donor_death_at, donor_death_kind,
    donor_nationality, donor_residence, donor_age, donor_sex, donor_abo,
    donor_rh, donor_hla, donor_non_resident,
    recipient_fp, recipient_nationality, recipient_residence, recipient_age,
    recipient_sex, recipient_abo, recipient_rh, recipient_hla,
    recipient_non_resident, ledger_seq, ledger_mac, donor_element,
    recipient_element, version_recorded_at, received_at)
  FROM STDIN (FORMAT binary)";

/// Fields of a row of [`COPY_RECORDS`].
const COPY_FIELDS: i16 = 42;

/// A new record's row, its fields in [`COPY_RECORDS`]' order, with its
/// first chain link and its MAC.
fn row_of(
    rows: &mut CopyRows,
    n: &NewRecord<'_>,
    (chain_head, mac): (&[u8; 32], &RowMac),
    recorded_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let r = n.record;
    let (relation, death_at, death_kind) = kind_columns(&r.donor.kind);
    let (donor_element, recipient_element) = n.form.element_bytes();
    rows.row(COPY_FIELDS);
    rows.field(n.id.0)?;
    rows.field(&chain_head[..])?;
    rows.field(&n.form.hash[..])?;
    rows.field(r.hospital_id.as_str())?;
    rows.field(r.external_record_id.as_str())?;
    rows.field(r.clinic_id.as_str())?;
    rows.field(r.procedure_country.as_str())?;
    rows.field(r.organ.as_str())?;
    rows.field(r.laterality.as_str())?;
    rows.field(r.procured_at)?;
    rows.field(r.transplanted_at)?;
    rows.field(
        r.cold_ischemia_minutes
            .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
    )?;
    rows.field(r.machine_perfusion)?;
    rows.field(r.abo_exception.as_str())?;
    rows.field(&r.donor.person.identifier.as_bytes()[..])?;
    rows.field(r.donor.kind.donor_type().as_str())?;
    rows.field(relation)?;
    rows.field(death_at)?;
    rows.field(death_kind)?;
    person(rows, &r.donor.person, r.donor_is_foreign())?;
    rows.field(&r.recipient.identifier.as_bytes()[..])?;
    person(rows, &r.recipient, r.recipient_is_foreign())?;
    rows.field(n.seq)?;
    rows.field(&mac[..])?;
    rows.field(donor_element)?;
    rows.field(recipient_element)?;
    rows.field(recorded_at)?;
    rows.field(recorded_at)?;
    Ok(())
}

/// A person's fields after the fingerprint (and, for the donor, the
/// donor's kind): nationality, residence, age, sex, ABO, Rh, HLA,
/// non-resident.
fn person(
    rows: &mut CopyRows,
    p: &Person<Fingerprint>,
    non_resident: bool,
) -> Result<(), StoreError> {
    rows.field(p.nationality.as_str())?;
    rows.field(p.country_of_residence.as_str())?;
    rows.field(i16::from(p.age_years))?;
    rows.field(p.sex.map(|s| s.as_str()))?;
    rows.field(p.abo.as_str())?;
    rows.field(p.rh.map(|x| x.as_str()))?;
    rows.field(hla_json(p.hla.as_ref()))?;
    rows.field(non_resident)?;
    Ok(())
}

/// Rows in `COPY`'s binary format, each field encoded as sqlx encodes a
/// bound parameter (the same binary form).
struct CopyRows(PgArgumentBuffer);

impl CopyRows {
    /// The format's header: signature, flags, no extension.
    fn new() -> Self {
        let mut buf = PgArgumentBuffer::default();
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0_i32.to_be_bytes());
        buf.extend_from_slice(&0_i32.to_be_bytes());
        Self(buf)
    }

    /// Starts a row of `fields` fields.
    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    /// One field: its length (-1 for NULL), then its bytes.
    fn field<'q, T: Encode<'q, Postgres>>(&mut self, value: T) -> Result<(), StoreError> {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        let length = match value
            .encode_by_ref(&mut self.0)
            .map_err(sqlx::Error::Encode)?
        {
            IsNull::Yes => {
                self.0.truncate(at + 4);
                -1
            }
            IsNull::No => i32::try_from(self.0.len() - at - 4)
                .map_err(|_| StoreError::Corrupt("a field too large to copy".into()))?,
        };
        self.0[at..at + 4].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }

    /// The rows with the format's trailer.
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1_i16).to_be_bytes());
        std::mem::take(&mut *self.0)
    }
}
