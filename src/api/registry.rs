//! `RegistryService`: the registry of licensed clinics.

use tonic::{Request, Response, Status};

use crate::domain::CountryCode;
use crate::store::Store;

use super::page_token::PageTokens;
use super::status::{ApiError, Resource, invalid, invalid_field};
use crate::wire::convert::{clinic, clinic_to_proto};
use crate::wire::listing::page_size;
use crate::wire::pb;
use crate::wire::pb::registry_service_server::RegistryService;

/// The gRPC face of the clinic registry.
#[derive(Clone, Debug)]
pub struct RegistryApi {
    store: Store,
    tokens: PageTokens,
}

/// The listing name clinic page tokens are bound to.
const CLINICS_LISTING: &str = "clinics";

impl RegistryApi {
    /// Serves the registry kept in `store`, paging with `tokens`.
    pub fn new(store: Store, tokens: PageTokens) -> Self {
        Self { store, tokens }
    }
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn upsert_clinic(
        &self,
        request: Request<pb::UpsertClinicRequest>,
    ) -> Result<Response<pb::UpsertClinicResponse>, Status> {
        let entry = clinic(request.get_ref().clinic.as_ref()).map_err(invalid)?;
        let (stored, changed) = self.store.upsert_clinic(&entry).await?;
        tracing::info!(clinic_id = %entry.clinic_id, version = stored.version, changed, "registry entry upserted");
        Ok(Response::new(pb::UpsertClinicResponse {
            clinic: Some(clinic_to_proto(&stored)),
            changed,
        }))
    }

    async fn get_clinic(
        &self,
        request: Request<pb::GetClinicRequest>,
    ) -> Result<Response<pb::GetClinicResponse>, Status> {
        let req = request.get_ref();
        if req.clinic_id.is_empty() {
            return Err(invalid_field("clinic_id", "is required"));
        }
        if req.clinic_id.contains('\0') {
            return Err(invalid_field(
                "clinic_id",
                "must not contain the NUL character",
            ));
        }
        let current = self
            .store
            .clinic(&req.clinic_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(Resource::Clinic(req.clinic_id.clone())))?;
        let history = if req.include_history {
            self.store
                .clinic_history(&req.clinic_id)
                .await?
                .iter()
                .filter(|v| v.version != current.version)
                .map(clinic_to_proto)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::GetClinicResponse {
            clinic: Some(clinic_to_proto(&current)),
            history,
        }))
    }

    async fn list_clinics(
        &self,
        request: Request<pb::ListClinicsRequest>,
    ) -> Result<Response<pb::ListClinicsResponse>, Status> {
        let req = request.get_ref();
        let limit = page_size(req.page_size).map_err(invalid)?;
        let country = match req.country.as_str() {
            "" => None,
            raw => Some(
                raw.parse::<CountryCode>()
                    .map_err(|e| invalid_field("country", e.to_string()))?,
            ),
        };
        let filters = format!(
            "country={}",
            country.map(|c| c.to_string()).unwrap_or_default()
        );
        let after = self
            .tokens
            .decode(CLINICS_LISTING, &filters, &req.page_token)?;
        let page = self
            .store
            .list_clinics(
                country.as_ref().map(CountryCode::as_str),
                after.as_deref(),
                limit,
            )
            .await?;
        Ok(Response::new(pb::ListClinicsResponse {
            clinics: page.clinics.iter().map(clinic_to_proto).collect(),
            next_page_token: page
                .next_after
                .map(|a| self.tokens.encode(CLINICS_LISTING, &filters, &a))
                .unwrap_or_default(),
        }))
    }
}
