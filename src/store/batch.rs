//! Batch ingest in a few statements, whatever the batch's size: its
//! idempotency lookups, its record ids, its records (each row its current
//! version), and its flags each take one round trip.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use crate::domain::chain::GENESIS;
use crate::domain::{Clinic, Fingerprint, Person, Record, RecordElements, RecordId};
use crate::rules::{ClinicWindow, Finding, PriorDonation};

use super::body::HlaBody;
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
    /// keys has committed already.
    pub async fn lock_and_allocate(
        &mut self,
        records: &[&Record],
    ) -> Result<Vec<(RecordId, i64)>, StoreError> {
        let n = i32::try_from(records.len())
            .map_err(|_| StoreError::Corrupt("batch too large".into()))?;
        let (keys, exclusive) = super::ingest::lock_order(records.iter().copied());
        let rows = sqlx::query!(
            r#"SELECT nextval(pg_get_serial_sequence('records', 'id')) AS "id!",
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
    /// entry, in one statement. `None` when a concurrent writer took one of
    /// their idempotency keys first: the transaction must then be rolled
    /// back, because the batch's rules counted that record as new.
    pub async fn insert_new(
        &mut self,
        records: &[NewRecord<'_>],
    ) -> Result<Option<Vec<StoredAck>>, StoreError> {
        let recorded_at = chain::now();
        let c = Columns::of(records, |n| {
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
            (chain_head, self.ledger.mac(&state.input()))
        });
        let rows = sqlx::query!(
            "INSERT INTO records (
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
               OVERRIDING SYSTEM VALUE
               SELECT *, $37::timestamptz, $37::timestamptz FROM unnest(
                   $1::bigint[], $2::bytea[], $3::bytea[], $4::text[], $5::text[],
                   $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                   $11::timestamptz[], $12::int[], $13::bool[], $14::text[],
                   $15::bytea[], $16::text[], $17::text[], $18::timestamptz[], $19::text[],
                   $20::text[], $21::text[], $22::smallint[], $23::text[], $24::text[],
                   $25::text[], $26::jsonb[], $27::bool[],
                   $28::bytea[], $29::text[], $30::text[], $31::smallint[],
                   $32::text[], $33::text[], $34::text[], $35::jsonb[], $36::bool[],
                   $38::bigint[], $39::bytea[], $40::bytea[], $41::bytea[])
               ON CONFLICT ON CONSTRAINT records_idempotency DO NOTHING
               RETURNING id, received_at",
            &c.id,
            &c.chain_head,
            &c.content_hash as &[&[u8]],
            &c.hospital_id as &[&str],
            &c.external_record_id as &[&str],
            &c.clinic_id as &[&str],
            &c.procedure_country as &[&str],
            &c.organ as &[&str],
            &c.laterality as &[&str],
            &c.procured_at,
            &c.transplanted_at,
            &c.cold_ischemia_minutes as &[Option<i32>],
            &c.machine_perfusion,
            &c.abo_exception as &[&str],
            &c.donor.fp as &[&[u8]],
            &c.donor_type as &[&str],
            &c.donor_relation as &[Option<&str>],
            &c.donor_death_at as &[Option<DateTime<Utc>>],
            &c.donor_death_kind as &[Option<&str>],
            &c.donor.nationality as &[&str],
            &c.donor.residence as &[&str],
            &c.donor.age,
            &c.donor.sex as &[Option<&str>],
            &c.donor.abo as &[&str],
            &c.donor.rh as &[Option<&str>],
            &c.donor.hla as &[Option<Json<HlaBody<'_>>>],
            &c.donor.non_resident,
            &c.recipient.fp as &[&[u8]],
            &c.recipient.nationality as &[&str],
            &c.recipient.residence as &[&str],
            &c.recipient.age,
            &c.recipient.sex as &[Option<&str>],
            &c.recipient.abo as &[&str],
            &c.recipient.rh as &[Option<&str>],
            &c.recipient.hla as &[Option<Json<HlaBody<'_>>>],
            &c.recipient.non_resident,
            recorded_at,
            &c.seq,
            &c.ledger_mac,
            &c.donor_element as &[Option<&[u8]>],
            &c.recipient_element as &[Option<&[u8]>],
        )
        .fetch_all(&mut *self.tx)
        .await?;
        if rows.len() != records.len() {
            return Ok(None);
        }
        for n in records {
            self.activity.record_stored(n.record);
        }
        let mut acks: Vec<StoredAck> = rows
            .into_iter()
            .map(|r| StoredAck {
                id: RecordId(r.id),
                version: 1,
                received_at: r.received_at,
            })
            .collect();
        acks.sort_unstable_by_key(|a| a.id);
        Ok(Some(acks))
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

/// A person's columns, one array per column.
#[derive(Default)]
struct PersonColumns<'a> {
    fp: Vec<&'a [u8]>,
    nationality: Vec<&'a str>,
    residence: Vec<&'a str>,
    age: Vec<i16>,
    sex: Vec<Option<&'a str>>,
    abo: Vec<&'a str>,
    rh: Vec<Option<&'a str>>,
    hla: Vec<Option<Json<HlaBody<'a>>>>,
    non_resident: Vec<bool>,
}

impl<'a> PersonColumns<'a> {
    fn push(&mut self, p: &'a Person<Fingerprint>, non_resident: bool) {
        self.fp.push(p.identifier.as_bytes().as_slice());
        self.nationality.push(p.nationality.as_str());
        self.residence.push(p.country_of_residence.as_str());
        self.age.push(i16::from(p.age_years));
        self.sex.push(p.sex.map(|s| s.as_str()));
        self.abo.push(p.abo.as_str());
        self.rh.push(p.rh.map(|x| x.as_str()));
        self.hla.push(hla_json(p.hla.as_ref()));
        self.non_resident.push(non_resident);
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

/// A batch of new records, one array per column, for `UNNEST`.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<i64>,
    seq: Vec<i64>,
    chain_head: Vec<Vec<u8>>,
    ledger_mac: Vec<Vec<u8>>,
    content_hash: Vec<&'a [u8]>,
    hospital_id: Vec<&'a str>,
    external_record_id: Vec<&'a str>,
    clinic_id: Vec<&'a str>,
    procedure_country: Vec<&'a str>,
    organ: Vec<&'a str>,
    laterality: Vec<&'a str>,
    procured_at: Vec<DateTime<Utc>>,
    transplanted_at: Vec<DateTime<Utc>>,
    cold_ischemia_minutes: Vec<Option<i32>>,
    machine_perfusion: Vec<bool>,
    abo_exception: Vec<&'a str>,
    donor_type: Vec<&'a str>,
    donor_relation: Vec<Option<&'a str>>,
    donor_death_at: Vec<Option<DateTime<Utc>>>,
    donor_death_kind: Vec<Option<&'a str>>,
    donor: PersonColumns<'a>,
    recipient: PersonColumns<'a>,
    donor_element: Vec<Option<&'a [u8]>>,
    recipient_element: Vec<Option<&'a [u8]>>,
}

impl<'a> Columns<'a> {
    /// The columns of `records`, with each one's first chain link and row
    /// MAC from `seal`.
    fn of(records: &[NewRecord<'a>], seal: impl Fn(&NewRecord<'a>) -> ([u8; 32], RowMac)) -> Self {
        let mut c = Columns::default();
        for n in records {
            let r = n.record;
            let (relation, death_at, death_kind) = kind_columns(&r.donor.kind);
            let (chain_head, mac) = seal(n);
            c.id.push(n.id.0);
            c.seq.push(n.seq);
            c.chain_head.push(chain_head.to_vec());
            c.ledger_mac.push(mac.to_vec());
            c.content_hash.push(&n.form.hash);
            c.hospital_id.push(&r.hospital_id);
            c.external_record_id.push(&r.external_record_id);
            c.clinic_id.push(&r.clinic_id);
            c.procedure_country.push(r.procedure_country.as_str());
            c.organ.push(r.organ.as_str());
            c.laterality.push(r.laterality.as_str());
            c.procured_at.push(r.procured_at);
            c.transplanted_at.push(r.transplanted_at);
            c.cold_ischemia_minutes.push(
                r.cold_ischemia_minutes
                    .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            );
            c.machine_perfusion.push(r.machine_perfusion);
            c.abo_exception.push(r.abo_exception.as_str());
            c.donor_type.push(r.donor.kind.donor_type().as_str());
            c.donor_relation.push(relation);
            c.donor_death_at.push(death_at);
            c.donor_death_kind.push(death_kind);
            c.donor.push(&r.donor.person, r.donor_is_foreign());
            c.recipient.push(&r.recipient, r.recipient_is_foreign());
            let (donor, recipient) = n.form.element_bytes();
            c.donor_element.push(donor);
            c.recipient_element.push(recipient);
        }
        c
    }
}
