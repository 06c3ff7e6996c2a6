//! `AdminService`: re-running rules over history.

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use chrono::Utc;

use crate::domain::access::{KeySpec, NewApiKey};
use crate::domain::ledger::{Digest, PublicKey};
use crate::domain::{Role, Violations};
use crate::federation::peers::check_peer;
use crate::rescan::{self, RescanReport, RescanRequest};
use crate::rules::{Engine, RuleId};
use crate::store::Store;
use crate::store::federation::Peer;
use crate::store::keys::ApiKey;
use crate::store::rescan::TransplantRange;

use super::auth::{Authenticator, caller};
use super::page_token::PageTokens;
use super::status::{ApiError, Resource, invalid, invalid_field};
use crate::wire::convert::{ProtoEnum, instant, required, timestamp};
use crate::wire::listing::page_size;
use crate::wire::pb;
use crate::wire::pb::admin_service_server::AdminService;

/// The listing name key page tokens are bound to.
const KEYS_LISTING: &str = "keys";

/// Progress messages buffered ahead of a slow reader; older ones are dropped.
const PROGRESS_BUFFER: usize = 16;

/// The gRPC face of administration.
#[derive(Clone, Debug)]
pub struct AdminApi {
    store: Store,
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    trusted: Arc<[PublicKey]>,
    tokens: PageTokens,
}

impl AdminApi {
    /// Serves administration of `store` under `engine`'s rules, paging with
    /// `tokens`; keys created and revoked reach `auth` at once; blocks and
    /// digests are checked against the `trusted` public keys.
    pub fn new(
        store: Store,
        engine: Arc<Engine>,
        auth: Arc<Authenticator>,
        trusted: Arc<[PublicKey]>,
        tokens: PageTokens,
    ) -> Self {
        Self {
            store,
            engine,
            auth,
            trusted,
            tokens,
        }
    }
}

fn rescan_request(req: &pb::RescanRequest) -> Result<RescanRequest, Violations> {
    let mut v = Violations::default();
    let rules: Vec<RuleId> = req
        .rule_ids
        .iter()
        .enumerate()
        .filter_map(|(i, r)| v.check(format!("rule_ids[{i}]"), r.parse::<RuleId>()))
        .collect();
    let range = TransplantRange {
        from: instant(&mut v, "transplanted_from", req.transplanted_from.as_ref()),
        until: instant(
            &mut v,
            "transplanted_until",
            req.transplanted_until.as_ref(),
        ),
    };
    let resume = match req.resume_run_id.as_str() {
        "" => None,
        raw => {
            let run = raw.parse::<i64>().ok().filter(|id| *id > 0);
            if run.is_none() {
                v.add("resume_run_id", "must be a run id this service returned");
            }
            let restated = !req.rule_ids.is_empty()
                || req.transplanted_from.is_some()
                || req.transplanted_until.is_some()
                || req.dry_run;
            if restated {
                v.add(
                    "resume_run_id",
                    "a resumed run keeps its own rules and range; leave the other fields empty",
                );
            }
            run
        }
    };
    v.into_result(|| RescanRequest {
        rules,
        range,
        dry_run: req.dry_run,
        resume,
        chunk_size: 0,
    })
}

fn report_to_proto(report: &RescanReport) -> pb::RescanReport {
    pb::RescanReport {
        dry_run: report.dry_run,
        processed: report.processed,
        flags_added: report.flags_added,
        rules: report
            .rules
            .iter()
            .map(|(rule, c)| pb::RuleChange {
                rule_id: rule.as_str().to_owned(),
                added: c.added,
                still_raised: c.still_raised,
                no_longer_raised: c.no_longer_raised,
                added_record_ids: c
                    .added_examples
                    .iter()
                    .map(|(id, _)| id.0.to_string())
                    .collect(),
                no_longer_raised_flag_ids: c
                    .no_longer_raised_examples
                    .iter()
                    .map(i64::to_string)
                    .collect(),
            })
            .collect(),
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::RescanResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    type RescanStream = ProgressStream;

    async fn rescan(
        &self,
        request: Request<pb::RescanRequest>,
    ) -> Result<Response<Self::RescanStream>, Status> {
        let rescan_request = rescan_request(request.get_ref()).map_err(invalid)?;
        let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
        let (store, engine) = (self.store.clone(), self.engine.clone());
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let result = rescan::rescan(&store, &engine, rescan_request, |p| {
                if progress_tx.is_closed() {
                    tracing::info!(run_id = ?p.run_id, "rescan caller went away; stopping");
                    return ControlFlow::Break(());
                }
                let message = pb::RescanResponse {
                    run_id: p.run_id.map(|id| id.to_string()).unwrap_or_default(),
                    processed: p.processed,
                    total: p.total,
                    flags_added: p.flags_added,
                    report: None,
                };
                // A slow reader misses intermediate progress, never the report.
                let _ = progress_tx.try_send(Ok(message));
                ControlFlow::Continue(())
            })
            .await;
            let last = result.map(|report| pb::RescanResponse {
                run_id: report.run_id.map(|id| id.to_string()).unwrap_or_default(),
                processed: report.processed,
                total: report.processed,
                flags_added: report.flags_added,
                report: Some(report_to_proto(&report)),
            });
            let _ = tx.send(last.map_err(Status::from)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let admin = caller(&request)?.clone();
        let req = request.get_ref();
        let mut v = Violations::default();
        let role: Option<Role> = required(&mut v, "role", req.role);
        let expires_at = instant(&mut v, "expires_at", req.expires_at.as_ref());
        let Some(role) = role.filter(|_| v.is_empty()) else {
            return Err(invalid(v));
        };
        let spec = KeySpec::new(
            role,
            Some(&req.hospital_id),
            &req.description,
            expires_at,
            Some(&req.principal),
            Utc::now(),
        )
        .map_err(invalid)?;
        let new = NewApiKey::generate().map_err(|e| {
            tracing::error!(error = %e, "no system randomness for a new key");
            ApiError::Internal
        })?;
        let key = self
            .store
            .create_key(&new, &spec, Some(&admin.principal))
            .await?;
        self.auth.learn(&key.key_id);
        tracing::info!(
            by = %admin.principal, by_key = %admin.key_id, key_id = %key.key_id,
            principal = %key.principal, role = %key.role, "API key created"
        );
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(key_to_proto(&key)),
            token: new.token,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let req = request.get_ref();
        let limit = page_size(req.page_size).map_err(invalid)?;
        let before =
            match self.tokens.decode(KEYS_LISTING, "", &req.page_token)? {
                Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
                    invalid_field("page_token", "is not a token this listing issued")
                })?),
                None => None,
            };
        let page = self.store.keys(before, limit).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: page.keys.iter().map(key_to_proto).collect(),
            next_page_token: page
                .next_before
                .map(|b| self.tokens.encode(KEYS_LISTING, "", &b.to_string()))
                .unwrap_or_default(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let admin = caller(&request)?.principal.clone();
        let key_id = &request.get_ref().key_id;
        if key_id.is_empty() {
            return Err(invalid_field("key_id", "is required"));
        }
        let key = self
            .store
            .revoke_key(key_id)
            .await?
            .ok_or(ApiError::NotFound(Resource::ApiKey))?;
        self.auth.forget(&key.key_id);
        tracing::info!(by = %admin, key_id = %key.key_id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {
            key: Some(key_to_proto(&key)),
        }))
    }

    async fn add_federation_peer(
        &self,
        request: Request<pb::AddFederationPeerRequest>,
    ) -> Result<Response<pb::AddFederationPeerResponse>, Status> {
        let admin = caller(&request)?.principal.clone();
        let Some(peer) = request.into_inner().peer else {
            return Err(invalid_field("peer", "is required"));
        };
        let v = check_peer("peer.", &peer.name, &peer.address, &peer.ca_pem);
        if !v.0.is_empty() {
            return Err(invalid(v));
        }
        let added = self
            .store
            .add_peer(&peer.name, &peer.address, &peer.ca_pem, &admin)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(by = %admin, peer = %added.name, "federation peer added");
        Ok(Response::new(pb::AddFederationPeerResponse {
            peer: Some(peer_to_proto(&added)),
        }))
    }

    async fn list_federation_peers(
        &self,
        _request: Request<pb::ListFederationPeersRequest>,
    ) -> Result<Response<pb::ListFederationPeersResponse>, Status> {
        let peers = self.store.peers().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListFederationPeersResponse {
            peers: peers.iter().map(peer_to_proto).collect(),
        }))
    }

    async fn remove_federation_peer(
        &self,
        request: Request<pb::RemoveFederationPeerRequest>,
    ) -> Result<Response<pb::RemoveFederationPeerResponse>, Status> {
        let admin = caller(&request)?.principal.clone();
        let name = &request.get_ref().name;
        if name.is_empty() {
            return Err(invalid_field("name", "is required"));
        }
        self.store.remove_peer(name).await.map_err(ApiError::from)?;
        tracing::info!(by = %admin, peer = %name, "federation peer removed");
        Ok(Response::new(pb::RemoveFederationPeerResponse {}))
    }

    async fn verify_audit_trail(
        &self,
        request: Request<pb::VerifyAuditTrailRequest>,
    ) -> Result<Response<pb::VerifyAuditTrailResponse>, Status> {
        let mut v = Violations::default();
        let digests: Vec<Digest> = request
            .get_ref()
            .digests
            .iter()
            .enumerate()
            .filter_map(|(i, line)| {
                v.check(
                    format!("digests[{i}]"),
                    serde_json::from_str::<Digest>(line).map_err(|_| "is not a digest"),
                )
            })
            .collect();
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let report = self.store.verify(&digests, &self.trusted).await?;
        if let Some(b) = &report.first_break {
            tracing::error!(table = b.table, row = %b.row, block = ?b.block, reason = %b.reason, "audit trail broken");
        }
        Ok(Response::new(pb::VerifyAuditTrailResponse {
            record_versions_checked: report.record_versions,
            flag_events_checked: report.flags,
            intact: report.first_break.is_none(),
            blocks_checked: report.blocks,
            digests_matched: report.digests,
            sealed_rows_checked: report.sealed_rows,
            unsealed_rows_checked: report.unsealed_rows,
            first_break: report.first_break.map(|b| pb::ChainBreak {
                table: b.table.to_owned(),
                entity_id: b.row,
                entry: b.block.map(|n| n.to_string()).unwrap_or_default(),
                reason: b.reason,
            }),
        }))
    }
}

fn key_to_proto(key: &ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        key_id: key.key_id.clone(),
        role: key.role.to_proto(),
        hospital_id: key.hospital_id.clone().unwrap_or_default(),
        description: key.description.clone(),
        created_at: Some(timestamp(key.created_at)),
        expires_at: key.expires_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
        principal: key.principal.clone(),
        issued_by: key.issued_by.clone().unwrap_or_default(),
    }
}

fn peer_to_proto(p: &Peer) -> pb::FederationPeer {
    pb::FederationPeer {
        name: p.name.clone(),
        address: p.address.clone(),
        ca_pem: p.ca_pem.clone(),
        added_at: Some(timestamp(p.added_at)),
        added_by: p.added_by.clone(),
    }
}
