//! Clinic and country activity (`GetClinicActivity`, `GetCountryActivity`
//! of `InvestigationService`): the requests read as spans of months, the
//! counters read from the store and shaped as the report prints them.

use tonic::Status;

use crate::domain::activity::CountryActivity;
use crate::investigation::Investigation;
use crate::rules::config::NonResidentShareConfig;
use crate::store::Store;
use crate::wire::activity::{clinic_span, clinic_to_proto, country_to_proto, country_year};
use crate::wire::pb;

use super::status::{ApiError, invalid};

/// Reads activity from the store's counters, next to the share rule's line.
#[derive(Clone, Debug)]
pub struct ActivityApi {
    store: Store,
    investigation: Investigation,
}

impl ActivityApi {
    /// Reads from `store`; `share` is the share rule's configuration, whose
    /// line the figures are printed next to.
    pub fn new(store: Store, share: NonResidentShareConfig) -> Self {
        Self {
            investigation: Investigation::new(store.clone(), share),
            store,
        }
    }

    /// The investigation reads behind these calls.
    pub fn investigation(&self) -> &Investigation {
        &self.investigation
    }

    /// One clinic's months. A clinic neither registered nor named by any
    /// record is NOT_FOUND.
    pub async fn clinic(
        &self,
        req: &pb::GetClinicActivityRequest,
    ) -> Result<pb::GetClinicActivityResponse, Status> {
        let span = clinic_span(req).map_err(invalid)?;
        let activity = self
            .investigation
            .clinic_activity(&span.clinic_id, span.from, span.until)
            .await
            .map_err(ApiError::from)?;
        Ok(clinic_to_proto(&activity, self.investigation.share_rule()))
    }

    /// One procedure country's year, clinic by clinic; a country with no
    /// transplants that year answers with no clinics and zero totals.
    pub async fn country(
        &self,
        req: &pb::GetCountryActivityRequest,
    ) -> Result<pb::GetCountryActivityResponse, Status> {
        let year = country_year(req).map_err(invalid)?;
        let (from, until) = year.span();
        let values = self
            .store
            .country_activity(year.country, from, until)
            .await?;
        let activity = CountryActivity::fold(from, until, values);
        Ok(country_to_proto(
            &year,
            &activity,
            self.investigation.share_rule(),
        ))
    }
}
