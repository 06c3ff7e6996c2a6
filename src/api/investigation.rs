//! `InvestigationService`: record search, the network around a record, a
//! flag or a person, the flags as CSV, and the access log. Every call that
//! returns records or flags writes the access log first: one entry naming
//! the call's filter or origin, and one per record or flag returned. Cases,
//! suggested cases and dossiers are in [`cases`].

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::domain::ledger::SigningKey;
use crate::domain::search::RecordCursor;
use crate::export;
use crate::store::Store;
use crate::wire::convert::record_to_proto;
use crate::wire::investigation::{
    access_filter, access_to_proto, export_as_listing, network_request, network_to_proto,
    record_filter, summary_to_proto,
};
use crate::wire::listing;
use crate::wire::pb;
use crate::wire::pb::investigation_service_server::InvestigationService;

use super::Acting;
use super::activity::ActivityApi;
use super::cases;
use super::page_token::PageTokens;
use super::status::{ApiError, invalid, invalid_field};
use crate::rules::config::NonResidentShareConfig;

/// The listing names page tokens are bound to.
const RECORDS_LISTING: &str = "records";
const ACCESS_LISTING: &str = "access_log";

/// The gRPC face of investigation.
#[derive(Clone, Debug)]
pub struct InvestigationApi {
    pub(super) store: Store,
    pub(super) tokens: PageTokens,
    pub(super) signer: SigningKey,
    activity: ActivityApi,
}

impl InvestigationApi {
    /// Serves the records, flags and cases kept in `store`, paging with
    /// `tokens`, signing dossiers with `signer`.
    pub fn new(store: Store, tokens: PageTokens, signer: SigningKey) -> Self {
        Self {
            activity: ActivityApi::new(store.clone(), NonResidentShareConfig::default()),
            store,
            tokens,
            signer,
        }
    }

    /// Prints clinic activity next to the line of this share rule
    /// configuration (the defaults otherwise).
    pub fn with_share_rule(mut self, share: NonResidentShareConfig) -> Self {
        self.activity = ActivityApi::new(self.store.clone(), share);
        self
    }
}

#[tonic::async_trait]
impl InvestigationService for InvestigationApi {
    type ExportFlagsStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportFlagsResponse, Status>> + Send>>;

    async fn search_records(
        &self,
        request: Request<pb::SearchRecordsRequest>,
    ) -> Result<Response<pb::SearchRecordsResponse>, Status> {
        let acting = Acting::of(&request)?;
        let req = request.get_ref();
        let limit = listing::page_size(req.page_size).map_err(invalid)?;
        let filter = record_filter(req).map_err(invalid)?;
        let filters = format!("{filter:?}");
        let after =
            match self
                .tokens
                .decode(RECORDS_LISTING, &filters, &req.page_token)?
            {
                Some(cursor) => Some(cursor.parse::<RecordCursor>().map_err(|_| {
                    invalid_field("page_token", "is not a token this listing issued")
                })?),
                None => None,
            };
        let page = self
            .activity
            .investigation()
            .search_records(&acting.actor(), &filter, after, limit)
            .await?;
        Ok(Response::new(pb::SearchRecordsResponse {
            results: page
                .records
                .iter()
                .map(|(record, flags)| pb::RecordResult {
                    record: Some(record_to_proto(record)),
                    flags: flags.iter().map(summary_to_proto).collect(),
                })
                .collect(),
            next_page_token: page
                .next
                .map(|c| {
                    self.tokens
                        .encode(RECORDS_LISTING, &filters, &c.to_string())
                })
                .unwrap_or_default(),
        }))
    }

    async fn get_network(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkResponse>, Status> {
        let acting = Acting::of(&request)?;
        let asked = network_request(request.get_ref()).map_err(invalid)?;
        let view = self
            .activity
            .investigation()
            .network(&acting.actor(), &asked)
            .await
            .map_err(ApiError::from)?;
        let records: HashMap<i64, pb::StoredRecord> = view
            .records
            .iter()
            .map(|(id, r)| (*id, record_to_proto(r)))
            .collect();
        Ok(Response::new(network_to_proto(
            &view.network,
            &view.open_flags,
            &records,
        )))
    }

    async fn export_flags(
        &self,
        request: Request<pb::ExportFlagsRequest>,
    ) -> Result<Response<Self::ExportFlagsStream>, Status> {
        let acting = Acting::of(&request)?;
        let filter =
            listing::flag_filter(&export_as_listing(request.get_ref())).map_err(invalid)?;
        let reader = acting.reader();
        let chunks =
            export::flags_csv(self.store.clone(), filter, reader, export::ACTION).map(|chunk| {
                chunk
                    .map(|chunk| pb::ExportFlagsResponse { chunk })
                    .map_err(|e| Status::from(ApiError::from(e)))
            });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn list_access_log(
        &self,
        request: Request<pb::ListAccessLogRequest>,
    ) -> Result<Response<pb::ListAccessLogResponse>, Status> {
        let req = request.get_ref();
        let limit = listing::page_size(req.page_size).map_err(invalid)?;
        let filter = access_filter(req).map_err(invalid)?;
        let filters = format!("{filter:?}");
        let before =
            match self
                .tokens
                .decode(ACCESS_LISTING, &filters, &req.page_token)?
            {
                Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
                    invalid_field("page_token", "is not a token this listing issued")
                })?),
                None => None,
            };
        let page = self.store.access_log(&filter, before, limit).await?;
        Ok(Response::new(pb::ListAccessLogResponse {
            entries: page.entries.iter().map(access_to_proto).collect(),
            next_page_token: page
                .next_before
                .map(|b| self.tokens.encode(ACCESS_LISTING, &filters, &b.to_string()))
                .unwrap_or_default(),
        }))
    }

    async fn create_case(
        &self,
        request: Request<pb::CreateCaseRequest>,
    ) -> Result<Response<pb::CreateCaseResponse>, Status> {
        cases::create_case(self, request).await
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        cases::get_case(self, request).await
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        cases::list_cases(self, request).await
    }

    async fn add_flags_to_case(
        &self,
        request: Request<pb::AddFlagsToCaseRequest>,
    ) -> Result<Response<pb::AddFlagsToCaseResponse>, Status> {
        cases::add_flags_to_case(self, request).await
    }

    async fn remove_flag_from_case(
        &self,
        request: Request<pb::RemoveFlagFromCaseRequest>,
    ) -> Result<Response<pb::RemoveFlagFromCaseResponse>, Status> {
        cases::remove_flag_from_case(self, request).await
    }

    async fn assign_case(
        &self,
        request: Request<pb::AssignCaseRequest>,
    ) -> Result<Response<pb::AssignCaseResponse>, Status> {
        cases::assign_case(self, request).await
    }

    async fn update_case_status(
        &self,
        request: Request<pb::UpdateCaseStatusRequest>,
    ) -> Result<Response<pb::UpdateCaseStatusResponse>, Status> {
        cases::update_case_status(self, request).await
    }

    async fn add_case_note(
        &self,
        request: Request<pb::AddCaseNoteRequest>,
    ) -> Result<Response<pb::AddCaseNoteResponse>, Status> {
        cases::add_case_note(self, request).await
    }

    async fn suggest_cases(
        &self,
        request: Request<pb::SuggestCasesRequest>,
    ) -> Result<Response<pb::SuggestCasesResponse>, Status> {
        cases::suggest_cases(self, request).await
    }

    async fn export_case(
        &self,
        request: Request<pb::ExportCaseRequest>,
    ) -> Result<Response<pb::ExportCaseResponse>, Status> {
        cases::export_case(self, request).await
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        cases::get_public_key(self, request).await
    }

    async fn get_clinic_activity(
        &self,
        request: Request<pb::GetClinicActivityRequest>,
    ) -> Result<Response<pb::GetClinicActivityResponse>, Status> {
        Ok(Response::new(
            self.activity.clinic(request.get_ref()).await?,
        ))
    }

    async fn get_country_activity(
        &self,
        request: Request<pb::GetCountryActivityRequest>,
    ) -> Result<Response<pb::GetCountryActivityResponse>, Status> {
        Ok(Response::new(
            self.activity.country(request.get_ref()).await?,
        ))
    }
}
