//! A sync with one peer, from the initiating side: send this registry's
//! living donors' elements to be raised to the peer's key, read the peer's
//! living donors' elements and raise them to this registry's key, and
//! intersect. What matched is stored, and raises
//! `CROSS_BORDER_REPEAT_LIVING_DONOR` on the local records.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::domain::{BadElement, Element, FederationKey};
use crate::rules::{ClinicWindow, Engine, RuleContext, RuleId};
use crate::store::federation::{ExchangeLog, Side};
use crate::store::rescan::NewFlag;
use crate::store::{Store, StoreError};
use crate::wire::pb;
use crate::wire::pb::federation_service_client::FederationServiceClient;

use super::MAX_BATCH;
use super::serve::MAX_MESSAGE_BYTES;

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

fn element(bytes: &[u8]) -> Result<Element, SyncError> {
    Element::from_slice(bytes)
        .map_err(|e: BadElement| SyncError::Protocol(format!("an element the peer sent: {e}")))
}

async fn raise_off_runtime(
    key: &FederationKey,
    elements: Vec<Element>,
) -> Result<Vec<Element>, SyncError> {
    let key = key.clone();
    let (done, raised) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = done.send(key.raise_all(&elements));
    });
    raised
        .await
        .map_err(|_| SyncError::Protocol("raising was cancelled".into()))?
        .map_err(|e| SyncError::Protocol(format!("an element the peer sent: {e}")))
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
        let mut client = FederationServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let local: Vec<Vec<u8>> = self.store.living_donor_elements_since(since).await?;
        let total = local.len() as u64;
        let mut raised_local: Vec<Element> = Vec::with_capacity(local.len());
        for batch in local.chunks(MAX_BATCH) {
            let answer = client
                .raise_elements(pb::RaiseElementsRequest {
                    exchange_id: exchange_id.to_owned(),
                    elements: batch.to_vec(),
                })
                .await
                .map_err(|status| SyncError::Refused {
                    call: "RaiseElements",
                    status: Box::new(status),
                })?
                .into_inner();
            if answer.elements.len() != batch.len() {
                return Err(SyncError::Protocol(format!(
                    "{} elements sent, {} returned",
                    batch.len(),
                    answer.elements.len()
                )));
            }
            for bytes in &answer.elements {
                raised_local.push(element(bytes)?);
            }
            report.sent = raised_local.len() as u64;
            progress(Progress::Sent(report.sent, total));
        }

        let mut theirs: Vec<(Element, u32)> = Vec::new();
        let mut page_token = String::new();
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
            for d in &page.donor_elements {
                theirs.push((element(&d.element)?, d.donations.max(1)));
            }
            progress(Progress::Received(theirs.len() as u64));
            if page.next_page_token.is_empty() || page.donor_elements.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        report.peer_set = theirs.len() as u64;
        let (elements, counts): (Vec<Element>, Vec<u32>) = theirs.into_iter().unzip();
        let raised_theirs = raise_off_runtime(&self.key, elements).await?;
        let peer_set: HashMap<Element, u32> = raised_theirs.into_iter().zip(counts).collect();

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
