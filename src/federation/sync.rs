//! A sync with one peer, from the initiating side: send this registry's
//! living donors' elements to be raised to the peer's key, read the peer's
//! living donors' elements and raise them to this registry's key, and
//! intersect. What matched is stored, and raises
//! `CROSS_BORDER_REPEAT_LIVING_DONOR` on the local records.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use futures::StreamExt;
use tonic::transport::Channel;

use crate::domain::{FederationKey, Points};
use crate::rules::{ClinicWindow, Engine, RuleContext, RuleId};
use crate::store::federation::{ExchangeLog, Side};
use crate::store::rescan::NewFlag;
use crate::store::{Store, StoreError};
use crate::wire::pb;
use crate::wire::pb::federation_service_client::FederationServiceClient;

use super::MAX_BATCH;
use super::serve::MAX_MESSAGE_BYTES;

/// `RaiseElements` calls a sync keeps in flight: one being raised by the
/// peer while the next travels and the last answer is read.
const IN_FLIGHT: usize = 3;

/// What a sync found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The peer.
    pub peer: String,
    /// This registry's distinct living donors sent (in the time range).
    pub sent: u64,
    /// The peer's distinct living donors.
    pub peer_set: u64,
    /// Donors both registries hold.
    pub matched_donors: u64,
    /// Local records of those donors.
    pub matched_records: u64,
    /// Flags raised now (a record flagged before is not flagged again).
    pub flags_raised: u64,
}

/// How far a sync has come, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Elements of this registry raised by the peer so far, of all.
    Sent(u64, u64),
    /// Elements of the peer received so far.
    Received(u64),
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No peer of that name is configured.
    #[error("no peer named {0:?} is configured")]
    UnknownPeer(String),
    /// This registry has no federation key, or no certificate.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The peer could not be reached over mutual TLS.
    #[error("connecting to the peer: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The peer refused a call.
    #[error("the peer refused {call}: {status}")]
    Refused {
        /// The call.
        call: &'static str,
        /// Its answer.
        status: Box<tonic::Status>,
    },
    /// The peer answered something the protocol does not allow.
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This registry's side of a sync: its store, rules, key and certificate.
#[derive(Debug, Clone)]
pub struct Syncer {
    /// The database.
    pub store: Store,
    /// The rules (the federation rule may be off, or its severity changed).
    pub engine: std::sync::Arc<Engine>,
    /// The federation key.
    pub key: FederationKey,
    /// The certificate and key (PEM) it presents as a client.
    pub identity: (Vec<u8>, Vec<u8>),
}

/// Tells `progress` of `p`; the two halves of a sync share it, and neither
/// holds it across an await.
fn tell<P: FnMut(Progress)>(progress: &Mutex<P>, p: Progress) {
    let mut progress = match progress.lock() {
        Ok(progress) => progress,
        Err(poisoned) => poisoned.into_inner(),
    };
    (*progress)(p);
}

/// The peer's answer to one `RaiseElements` call: `elements` raised, in
/// order, compared as bytes only (a peer that answers garbage matches
/// nothing).
async fn raise_batch(
    mut client: FederationServiceClient<Channel>,
    exchange_id: String,
    elements: Vec<Vec<u8>>,
) -> Result<Vec<[u8; 32]>, SyncError> {
    let sent = elements.len();
    let answer = client
        .raise_elements(pb::RaiseElementsRequest {
            exchange_id,
            elements,
        })
        .await
        .map_err(|status| SyncError::Refused {
            call: "RaiseElements",
            status: Box::new(status),
        })?
        .into_inner();
    if answer.elements.len() != sent {
        return Err(SyncError::Protocol(format!(
            "{sent} elements sent, {} returned",
            answer.elements.len()
        )));
    }
    answer
        .elements
        .iter()
        .map(|bytes| {
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| SyncError::Protocol("a raised element is not 32 bytes".into()))
        })
        .collect()
}

/// A page of the peer's elements raised, with the donations of each.
type Raised = Result<Vec<([u8; 32], u32)>, SyncError>;

/// Raises a page of the peer's elements on the CPU pool; the answer comes
/// on the returned channel.
fn raise_on_cpu_pool(
    key: &FederationKey,
    page: Vec<pb::DonorElement>,
) -> tokio::sync::oneshot::Receiver<Raised> {
    let key = key.clone();
    let (done, raised) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let elements: Vec<&[u8]> = page.iter().map(|d| d.element.as_slice()).collect();
        let result = match Points::decode(&elements) {
            Ok(points) => Ok(key
                .raise_points(&points)
                .into_iter()
                .zip(&page)
                .map(|(e, d)| (e.0, d.donations.max(1)))
                .collect()),
            Err(bad) => Err(SyncError::Protocol(format!(
                "an element the peer sent: {}",
                bad.first().map_or_else(String::new, ToString::to_string)
            ))),
        };
        // The receiver is gone only if the sync was cancelled.
        let _ = done.send(result);
    });
    raised
}

/// Adds a raised page to the peer's set.
async fn collect(
    theirs: &mut HashMap<[u8; 32], u32>,
    page: tokio::sync::oneshot::Receiver<Raised>,
) -> Result<(), SyncError> {
    let page = page
        .await
        .map_err(|_| SyncError::Protocol("raising was cancelled".into()))??;
    theirs.extend(page);
    Ok(())
}

impl Syncer {
    /// Syncs with `peer_name`, sending the living donors transplanted from
    /// `since` on (all when `None`); logs the sync either way.
    pub async fn sync(
        &self,
        peer_name: &str,
        since: Option<DateTime<Utc>>,
        mut progress: impl FnMut(Progress),
    ) -> Result<SyncReport, SyncError> {
        let exchange_id = format!("sync-{}", Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
        let mut report = SyncReport {
            peer: peer_name.to_owned(),
            ..SyncReport::default()
        };
        let result = self
            .run(peer_name, since, &exchange_id, &mut report, &mut progress)
            .await;
        let detail = match &result {
            Ok(()) => format!(
                "{} donors matched, {} records, {} flags raised",
                report.matched_donors, report.matched_records, report.flags_raised
            ),
            Err(e) => e.to_string(),
        };
        if !matches!(result, Err(SyncError::UnknownPeer(_))) {
            self.store
                .log_exchange(&ExchangeLog {
                    peer: peer_name,
                    side: Side::Initiated,
                    call: "Sync",
                    exchange_id: &exchange_id,
                    elements_in: report.peer_set + report.sent,
                    elements_out: report.sent,
                    outcome: if result.is_ok() { "OK" } else { "FAILED" },
                    detail: &detail,
                })
                .await?;
        }
        result.map(|()| report)
    }

    async fn run(
        &self,
        peer_name: &str,
        since: Option<DateTime<Utc>>,
        exchange_id: &str,
        report: &mut SyncReport,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(), SyncError> {
        let peer = self
            .store
            .peer(peer_name)
            .await?
            .ok_or_else(|| SyncError::UnknownPeer(peer_name.to_owned()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&peer.ca_pem))
            .identity(Identity::from_pem(&self.identity.0, &self.identity.1));
        let channel = Endpoint::from_shared(peer.address.clone())?
            .tls_config(tls)?
            .connect()
            .await?;
        let client = FederationServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let local: Vec<Vec<u8>> = self.store.living_donor_elements_since(since).await?;
        let progress = Mutex::new(progress);
        // Both halves at once, each with calls in flight while the last
        // answer is being raised: the peer raises this registry's elements
        // while this registry raises the peer's, and neither side's cores
        // wait on the network.
        let (raised_local, peer_set) = tokio::try_join!(
            self.send(&client, exchange_id, &local, report, &progress),
            self.receive(&client, exchange_id, &progress),
        )?;
        report.peer_set = peer_set.len() as u64;

        let matched: Vec<(Vec<u8>, u32)> = local
            .into_iter()
            .zip(&raised_local)
            .filter_map(|(mine, raised)| peer_set.get(raised).map(|n| (mine, *n)))
            .collect();
        report.matched_donors = matched.len() as u64;
        let records = self.store.store_matches(peer_name, since, &matched).await?;
        report.matched_records = records.len() as u64;
        report.flags_raised = self.raise_flags(peer_name, &records).await?;
        Ok(())
    }

    /// Has the peer raise `local` to its key, `IN_FLIGHT` batches at a
    /// time; the answers come in `local`'s order.
    async fn send<P: FnMut(Progress)>(
        &self,
        client: &FederationServiceClient<Channel>,
        exchange_id: &str,
        local: &[Vec<u8>],
        report: &mut SyncReport,
        progress: &Mutex<P>,
    ) -> Result<Vec<[u8; 32]>, SyncError> {
        let total = local.len() as u64;
        // Each call owns what it sends: a future borrowing the batch would
        // not be `Send` for every lifetime, as a spawned periodic sync needs.
        let batches = local.len().div_ceil(MAX_BATCH);
        let mut answers = futures::stream::iter((0..batches).map(|i| {
            let batch = &local[i * MAX_BATCH..local.len().min((i + 1) * MAX_BATCH)];
            raise_batch(client.clone(), exchange_id.to_owned(), batch.to_vec())
        }))
        .buffered(IN_FLIGHT);
        let mut raised = Vec::with_capacity(local.len());
        while let Some(batch) = answers.next().await {
            raised.extend(batch?);
            report.sent = raised.len() as u64;
            tell(progress, Progress::Sent(report.sent, total));
        }
        Ok(raised)
    }

    /// The peer's living donors, raised to this registry's key, with their
    /// donations there. Pages are raised as they come, while the next is
    /// read.
    async fn receive<P: FnMut(Progress)>(
        &self,
        client: &FederationServiceClient<Channel>,
        exchange_id: &str,
        progress: &Mutex<P>,
    ) -> Result<HashMap<[u8; 32], u32>, SyncError> {
        let mut client = client.clone();
        let mut theirs: HashMap<[u8; 32], u32> = HashMap::new();
        let mut raising: Option<tokio::sync::oneshot::Receiver<Raised>> = None;
        let mut page_token = String::new();
        let mut received = 0;
        loop {
            let page = client
                .list_donor_elements(pb::ListDonorElementsRequest {
                    exchange_id: exchange_id.to_owned(),
                    page_size: 0,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(|status| SyncError::Refused {
                    call: "ListDonorElements",
                    status: Box::new(status),
                })?
                .into_inner();
            if let Some(previous) = raising.take() {
                collect(&mut theirs, previous).await?;
            }
            received += page.donor_elements.len() as u64;
            tell(progress, Progress::Received(received));
            let last = page.next_page_token.is_empty() || page.donor_elements.is_empty();
            page_token = page.next_page_token;
            raising = Some(raise_on_cpu_pool(&self.key, page.donor_elements));
            if last {
                break;
            }
        }
        if let Some(previous) = raising {
            collect(&mut theirs, previous).await?;
        }
        Ok(theirs)
    }

    /// Runs the federation rule on the matched records and raises its
    /// flag where it fires and none is there yet.
    async fn raise_flags(
        &self,
        peer: &str,
        records: &[crate::domain::RecordId],
    ) -> Result<u64, SyncError> {
        if records.is_empty() {
            return Ok(0);
        }
        let rule = RuleId::CrossBorderRepeatLivingDonor;
        let rule_ids = [rule.as_str().to_owned()];
        let (stored, matches, existing) = tokio::try_join!(
            self.store.stored_records(records),
            self.store.peer_matches(records),
            self.store.existing_flags(records, &rule_ids),
        )?;
        let window = ClinicWindow::default();
        let findings: Vec<_> = stored
            .iter()
            .map(|s| {
                let ctx = RuleContext {
                    clinic: None,
                    donor_history: &[],
                    clinic_window: &window,
                    peer_matches: matches.get(&s.id).map_or(&[], Vec::as_slice),
                };
                self.engine.evaluate_only(&s.record, &ctx, &[rule])
            })
            .collect();
        let flags: Vec<NewFlag<'_>> = stored
            .iter()
            .zip(&findings)
            .filter(|(s, _)| !existing.contains_key(&(s.id, rule.as_str().to_owned())))
            .flat_map(|(s, found)| {
                found
                    .iter()
                    .map(move |finding| NewFlag { record: s, finding })
            })
            .collect();
        let note = format!("raised by a federation sync with {peer}");
        Ok(self.store.raise_federation_flags(&flags, &note).await?)
    }
}
