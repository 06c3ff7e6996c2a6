//! `FederationService`: the peer's side of a private set intersection.
//! The caller is the peer its client certificate chains to; everything
//! else is refused and logged. The arithmetic is the core's; this adapter
//! checks the request, asks the store to admit and log it, and answers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{FederationKey, Points, Violations};
use crate::federation::MAX_BATCH;
use crate::federation::peers::{PeerCas, certificate_id};
use crate::incoming::ConnectionInfo;
use crate::store::Store;
use crate::store::federation::{Admission, ExchangeLog, Side};
use crate::wire::pb;
use crate::wire::pb::federation_service_server::FederationService;

use super::status::ApiError;

/// The longest exchange id accepted.
const MAX_EXCHANGE_ID: usize = 64;

/// The federation service over this registry's store and key.
#[derive(Debug, Clone)]
pub struct FederationApi {
    store: Store,
    key: FederationKey,
    peers: Arc<PeerCas>,
    ceiling: u64,
}

impl FederationApi {
    /// Serves `store`'s living donors under `key` to the peers `peers`
    /// knows, raising at most `ceiling` elements per peer and day.
    pub fn new(store: Store, key: FederationKey, peers: Arc<PeerCas>, ceiling: u64) -> Self {
        Self {
            store,
            key,
            peers,
            ceiling,
        }
    }

    /// The calling peer, or a refusal (logged) when the client is none.
    async fn caller<T>(&self, request: &Request<T>, call: &str) -> Result<String, Status> {
        let chain = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|info| info.peer_certificates.clone());
        let peer = chain.as_deref().and_then(|c| self.peers.peer_of(c));
        if let Some(peer) = peer {
            return Ok(peer);
        }
        let detail = match chain.as_deref().and_then(|c| c.first()) {
            Some(leaf) => certificate_id(leaf),
            None => "no client certificate".to_owned(),
        };
        tracing::warn!(call, %detail, "federation call refused: the client is no configured peer");
        self.log(ExchangeLog {
            peer: "",
            side: Side::Served,
            call,
            exchange_id: "",
            elements_in: 0,
            elements_out: 0,
            outcome: "REFUSED_NOT_A_PEER",
            detail: &detail,
        })
        .await?;
        Err(ApiError::NotAPeer.into())
    }

    async fn log(&self, entry: ExchangeLog<'_>) -> Result<(), Status> {
        self.store
            .log_exchange(&entry)
            .await
            .map_err(|e| Status::from(ApiError::from(e)))
    }

    /// Logs a request refused as invalid, then refuses it.
    async fn refuse(
        &self,
        peer: &str,
        call: &str,
        exchange_id: &str,
        elements_in: u64,
        violations: Violations,
    ) -> Status {
        let detail = violations
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        let logged = self
            .log(ExchangeLog {
                peer,
                side: Side::Served,
                call,
                exchange_id: bounded(exchange_id),
                elements_in,
                elements_out: 0,
                outcome: "REFUSED_BAD_INPUT",
                detail: &detail,
            })
            .await;
        match logged {
            Ok(()) => ApiError::InvalidFields(violations).into(),
            Err(status) => status,
        }
    }
}

/// `work` on the CPU pool (all cores), leaving the async runtime's workers
/// free.
async fn on_cpu_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    let (done, result) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        // The receiver is gone only if the call was cancelled.
        let _ = done.send(work());
    });
    result.await.map_err(|_| ApiError::Internal.into())
}

/// At most the first `MAX_EXCHANGE_ID` bytes (on a character boundary).
fn bounded(text: &str) -> &str {
    let mut end = text.len().min(MAX_EXCHANGE_ID);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn check_exchange_id(v: &mut Violations, exchange_id: &str) {
    if exchange_id.is_empty() || exchange_id.len() > MAX_EXCHANGE_ID {
        v.add(
            "exchange_id",
            format!("must be 1 to {MAX_EXCHANGE_ID} characters"),
        );
    } else if !exchange_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        v.add(
            "exchange_id",
            "must hold only ASCII letters, digits and -_.:",
        );
    }
}

#[tonic::async_trait]
impl FederationService for FederationApi {
    async fn raise_elements(
        &self,
        request: Request<pb::RaiseElementsRequest>,
    ) -> Result<Response<pb::RaiseElementsResponse>, Status> {
        let peer = self.caller(&request, "RaiseElements").await?;
        let pb::RaiseElementsRequest {
            exchange_id,
            elements,
        } = request.into_inner();
        let n = elements.len() as u64;
        let mut v = Violations::default();
        check_exchange_id(&mut v, &exchange_id);
        if elements.is_empty() || elements.len() > MAX_BATCH {
            v.add("elements", format!("must hold 1 to {MAX_BATCH} elements"));
        }
        if !v.0.is_empty() {
            return Err(self
                .refuse(&peer, "RaiseElements", &exchange_id, n, v)
                .await);
        }
        // Decoded once, on the CPU pool: the points checked here are the
        // ones raised below.
        let points = match on_cpu_pool(move || Points::decode(&elements)).await? {
            Ok(points) => points,
            Err(bad) => {
                for b in bad {
                    v.add(format!("elements[{}]", b.index), b.reason.to_string());
                }
                return Err(self
                    .refuse(&peer, "RaiseElements", &exchange_id, n, v)
                    .await);
            }
        };
        let admission = self
            .store
            .admit_raise(&peer, &exchange_id, n, self.ceiling)
            .await
            .map_err(ApiError::from)?;
        if let Admission::OverCeiling { used } = admission {
            tracing::warn!(%peer, used, ceiling = self.ceiling, "federation peer over its daily ceiling");
            return Err(ApiError::FederationCeiling {
                used,
                ceiling: self.ceiling,
            }
            .into());
        }
        let key = self.key.clone();
        let raised = on_cpu_pool(move || key.raise_points(&points)).await?;
        Ok(Response::new(pb::RaiseElementsResponse {
            elements: raised.iter().map(|e| e.0.to_vec()).collect(),
        }))
    }

    async fn list_donor_elements(
        &self,
        request: Request<pb::ListDonorElementsRequest>,
    ) -> Result<Response<pb::ListDonorElementsResponse>, Status> {
        let peer = self.caller(&request, "ListDonorElements").await?;
        let body = request.into_inner();
        let mut v = Violations::default();
        check_exchange_id(&mut v, &body.exchange_id);
        let page_size = match body.page_size {
            0 => MAX_BATCH,
            n if n < 0 || n as usize > MAX_BATCH => {
                v.add("page_size", format!("must be 0 to {MAX_BATCH}"));
                MAX_BATCH
            }
            n => n as usize,
        };
        let after = match body.page_token.as_str() {
            "" => None,
            token => match hex::decode(token).ok().filter(|b| b.len() == 32) {
                Some(bytes) => Some(bytes),
                None => {
                    v.add("page_token", "is not a token this service gave");
                    None
                }
            },
        };
        if !v.0.is_empty() {
            return Err(self
                .refuse(&peer, "ListDonorElements", &body.exchange_id, 0, v)
                .await);
        }
        let limit = i64::try_from(page_size).unwrap_or(i64::MAX);
        // The count reads every living donor: once a listing is enough.
        let first_page = after.is_none();
        let (page, total) = tokio::try_join!(
            self.store.living_donor_elements(after.as_deref(), limit),
            async {
                match first_page {
                    true => self.store.living_donor_count().await,
                    false => Ok(0),
                }
            },
        )
        .map_err(ApiError::from)?;
        let next_page_token = match page.last() {
            Some((last, _)) if page.len() == page_size => hex::encode(last),
            _ => String::new(),
        };
        self.log(ExchangeLog {
            peer: &peer,
            side: Side::Served,
            call: "ListDonorElements",
            exchange_id: &body.exchange_id,
            elements_in: 0,
            elements_out: page.len() as u64,
            outcome: "OK",
            detail: "",
        })
        .await?;
        Ok(Response::new(pb::ListDonorElementsResponse {
            donor_elements: page
                .into_iter()
                .map(|(element, donations)| pb::DonorElement {
                    element,
                    donations: u32::try_from(donations).unwrap_or(u32::MAX),
                })
                .collect(),
            next_page_token,
            total_size: total,
        }))
    }
}
