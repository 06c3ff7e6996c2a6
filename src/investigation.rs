//! Investigation reads, whichever face asks (the gRPC
//! `InvestigationService` or the web console): the network around a
//! record, a flag or a person, and a clinic's monthly activity. The faces
//! read their requests and shape the answers; the walk, the reads and the
//! access log entries are done here, once.

use std::collections::HashMap;

use chrono::NaiveDate;

use crate::domain::RecordView;
use crate::domain::activity::ClinicActivity;
use crate::domain::network::{Network, Origin, Walk};
use crate::domain::search::{FlagSummary, RecordCursor, RecordFilter};
use crate::rules::config::NonResidentShareConfig;
use crate::store::flags::Actor;
use crate::store::investigate::Read;
use crate::store::{Store, StoreError};
use crate::wire::investigation::{NetworkRequest, NetworkStart};

/// Why an investigation read found nothing or failed.
#[derive(Debug, thiserror::Error)]
pub enum InvestigationError {
    /// The network's start names no stored record.
    #[error("record not found")]
    RecordNotFound,
    /// The network's start names no flag.
    #[error("flag not found")]
    FlagNotFound,
    /// Neither the registry nor any record names the clinic.
    #[error("clinic {0:?} not found")]
    ClinicNotFound(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The network around a start, with what the faces show of its records.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// The walk's graph.
    pub network: Network,
    /// The graph's records, by id.
    pub records: HashMap<i64, RecordView>,
    /// The open flags of the graph's records, by record id.
    pub open_flags: HashMap<i64, Vec<FlagSummary>>,
}

impl NetworkView {
    /// The open flags of the records `node` joins (a record's own, a
    /// party's records').
    pub fn open_flags_of(&self, node: &crate::domain::network::Node) -> Vec<&FlagSummary> {
        self.network
            .records_of(node)
            .iter()
            .flat_map(|id| self.open_flags.get(id).into_iter().flatten())
            .collect()
    }
}

/// One page of a record search, newest transplant first.
#[derive(Debug, Clone)]
pub struct RecordPage {
    /// The records, each with every flag it has.
    pub records: Vec<(RecordView, Vec<FlagSummary>)>,
    /// Where the page stopped, when more may follow.
    pub next: Option<RecordCursor>,
}

/// The investigators' reads.
#[derive(Clone, Debug)]
pub struct Investigation {
    store: Store,
    share: NonResidentShareConfig,
}

impl Investigation {
    /// Reads from `store`; `share` is the share rule's configuration, whose
    /// line clinic activity is read against.
    pub fn new(store: Store, share: NonResidentShareConfig) -> Self {
        Self { store, share }
    }

    /// The share rule's configuration.
    pub fn share_rule(&self) -> &NonResidentShareConfig {
        &self.share
    }

    /// The records matching `filter` after `after`, at most `limit`, each
    /// with its flags, read for `actor` and logged (`SearchRecords`: the
    /// search, then every record).
    pub async fn search_records(
        &self,
        actor: &Actor<'_>,
        filter: &RecordFilter,
        after: Option<RecordCursor>,
        limit: i64,
    ) -> Result<RecordPage, StoreError> {
        let store = &self.store;
        let page = store.search_page(filter, after, limit).await?;
        let mut reads = vec![Read::of("search", format!("{filter:?}"))];
        reads.extend(page.ids.iter().map(|id| Read::of("record", id)));
        // Logged beside the reads, as the network is.
        let (records, mut flags, ()) = tokio::try_join!(
            store.records(&page.ids),
            store.flag_summaries(&page.ids, false),
            store.record_reads(actor, "SearchRecords", &reads),
        )?;
        Ok(RecordPage {
            records: records
                .into_iter()
                .map(|r| {
                    let of = flags.remove(&r.id.0).unwrap_or_default();
                    (r, of)
                })
                .collect(),
            next: page.next,
        })
    }

    /// Walks the network `asked` for as `actor`, one batch of reads per
    /// level, and logs it (`GetNetwork`: the start, then every record).
    pub async fn network(
        &self,
        actor: &Actor<'_>,
        asked: &NetworkRequest,
    ) -> Result<NetworkView, InvestigationError> {
        let store = &self.store;
        let origin = match &asked.start {
            NetworkStart::Record(id) => Origin::Record(
                store
                    .record_links(*id)
                    .await?
                    .ok_or(InvestigationError::RecordNotFound)?,
            ),
            NetworkStart::Flag(id) => {
                let flag = store
                    .flag(*id)
                    .await?
                    .ok_or(InvestigationError::FlagNotFound)?;
                Origin::Record(
                    store
                        .record_links(flag.record_id.0)
                        .await?
                        .ok_or(InvestigationError::RecordNotFound)?,
                )
            }
            NetworkStart::Party(party) => Origin::Party(party.clone()),
        };
        let mut walk = Walk::new(origin, asked.depth, asked.max_nodes);
        while let Some(parties) = walk.wanted() {
            let found = store
                .records_of_parties(&parties, walk.per_party_limit())
                .await?;
            walk.feed(found);
        }
        let network = walk.finish();
        let ids = network.record_ids();
        let mut reads = vec![Read {
            resource: "network",
            resource_id: format!(
                "{:?} depth={} max_nodes={}",
                asked.start, asked.depth, asked.max_nodes
            ),
        }];
        reads.extend(ids.iter().map(|id| Read {
            resource: "record",
            resource_id: id.to_string(),
        }));
        // The log is written beside the reads, on a connection of its own:
        // the answer still waits for it, so no read leaves unlogged, but a
        // network's 501 entries no longer add their time to the reads'.
        let (stored, open_flags, ()) = tokio::try_join!(
            store.records(&ids),
            store.flag_summaries(&ids, true),
            store.record_reads(actor, "GetNetwork", &reads),
        )?;
        let records = stored.into_iter().map(|r| (r.id.0, r)).collect();
        Ok(NetworkView {
            network,
            records,
            open_flags,
        })
    }

    /// One clinic's months from `from` to `until`, read from the counters
    /// kept at write time.
    pub async fn clinic_activity(
        &self,
        clinic_id: &str,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<ClinicActivity, InvestigationError> {
        if !self.store.clinic_known(clinic_id).await? {
            return Err(InvestigationError::ClinicNotFound(clinic_id.to_owned()));
        }
        let values = self.store.clinic_activity(clinic_id, from, until).await?;
        Ok(ClinicActivity::fold(clinic_id, from, until, values))
    }
}
