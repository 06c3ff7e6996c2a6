//! A clinic's page: its registry entry and licence history, its recent
//! flags, and its monthly activity (the figures `GetClinicActivity`
//! reads, through the same application layer) as charts drawn by
//! [`super::charts`], each with a table of its figures.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{Datelike, Months, NaiveDate, Utc};

use super::Console;
use super::charts::{self, ChartError};
use super::error::PageError;
use super::session::Signed;
use super::views::{FlagRow, Nav, when};
use crate::domain::FlagFilter;

/// Months of activity shown, ending with this one.
const MONTHS: u32 = 24;
/// Recent flags shown.
const RECENT_FLAGS: i64 = 20;
/// Nationalities the chart shows, most donors first.
const NATIONALITIES: usize = 12;

/// One version of the registry entry.
#[derive(Debug, Clone)]
pub struct LicenceRow {
    /// Its number.
    pub version: i32,
    /// When recorded.
    pub recorded_at: String,
    /// The name then.
    pub name: String,
    /// The status then.
    pub status: String,
    /// Organs licensed.
    pub organs: String,
    /// Licence valid from.
    pub valid_from: String,
    /// Licence valid until, or "–".
    pub valid_until: String,
}

/// One month's figures.
#[derive(Debug, Clone)]
pub struct MonthRow {
    /// YYYY-MM.
    pub month: String,
    /// Transplants, all organs and donor types.
    pub transplants: i64,
    /// Deceased donors' organs to non-residents.
    pub deceased_to_non_resident: i64,
    /// Living unrelated donors from abroad.
    pub living_unrelated_foreign_donor: i64,
    /// Deceased-donor transplants.
    pub deceased: i64,
    /// Of those, the share to non-residents, as a percentage; "–" without any.
    pub share: String,
    /// Whether the share is above the rule's line.
    pub above: bool,
    /// Flags raised.
    pub flags: i64,
}

/// A clinic.
#[derive(Template)]
#[template(path = "console/clinic.html")]
pub struct ClinicPage {
    /// The header.
    pub nav: Nav,
    /// Its id.
    pub clinic_id: String,
    /// Its registry versions, newest first; empty when unregistered.
    pub licences: Vec<LicenceRow>,
    /// Its newest flags.
    pub flags: Vec<FlagRow>,
    /// Its months, oldest first.
    pub months: Vec<MonthRow>,
    /// Transplants per month, as SVG.
    pub transplants_chart: String,
    /// The non-resident share per month against the rule's line, as SVG.
    pub share_chart: String,
    /// Foreign living donors by nationality, as SVG; empty without any.
    pub nationality_chart: String,
    /// The rule's line, as a percentage.
    pub limit: String,
    /// Foreign living donors over the months, by nationality, most first.
    pub nationalities: Vec<(String, i64)>,
}

/// `GET /clinics/{id}`.
pub async fn clinic(
    State(console): State<Console>,
    signed: Signed,
    Path(clinic_id): Path<String>,
) -> Result<Response, PageError> {
    if clinic_id.len() > 200 {
        return Err(PageError::NotFound("clinic"));
    }
    let history = console.inner.store.clinic_history(&clinic_id).await?;
    let today = Utc::now().date_naive();
    let until = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let from = until
        .checked_sub_months(Months::new(MONTHS - 1))
        .unwrap_or(until);
    let investigation = &console.inner.investigation;
    let activity = investigation
        .clinic_activity(&clinic_id, from, until)
        .await?;
    let limit = investigation.share_rule().max_share;
    let filter = FlagFilter {
        clinic_id: Some(clinic_id.clone()),
        ..FlagFilter::default()
    };
    let flags = console
        .inner
        .audit
        .list_flags(&filter, None, RECENT_FLAGS)
        .await?;
    let months = activity
        .months
        .iter()
        .map(|(month, a)| {
            let deceased = a.deceased_transplants();
            let share = a.non_resident_share();
            MonthRow {
                month: month.format("%Y-%m").to_string(),
                transplants: a.total_transplants(),
                deceased_to_non_resident: a.deceased_to_non_resident,
                living_unrelated_foreign_donor: a.living_unrelated_foreign_donor,
                deceased,
                share: if deceased > 0 {
                    format!("{:.1}%", share * 100.0)
                } else {
                    "–".to_owned()
                },
                above: deceased > 0 && share > limit,
                flags: a.flags_by_rule.values().sum(),
            }
        })
        .collect::<Vec<_>>();
    let mut nationalities: Vec<(String, i64)> = activity
        .total
        .foreign_living_donor_nationalities
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| (c.as_str().to_owned(), *n))
        .collect();
    nationalities.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // The registry's name as it stands, else the id the records use.
    let name = history
        .first()
        .map(|v| v.clinic.name.clone())
        .unwrap_or_else(|| clinic_id.clone());
    let labels: Vec<String> = months.iter().map(|m| m.month.clone()).collect();
    let transplants_chart = charts::bars(
        &format!("{name}: transplants per month"),
        "transplants",
        &labels,
        &months.iter().map(|m| m.transplants).collect::<Vec<_>>(),
        "transplants-h",
    )?;
    let share_chart = charts::share_line(
        &format!("{name}: deceased-donor organs to non-residents"),
        &labels,
        &activity
            .months
            .iter()
            .map(|(_, a)| (a.deceased_transplants() > 0).then(|| a.non_resident_share()))
            .collect::<Vec<_>>(),
        limit,
        "share-h",
    )?;
    let shown: Vec<&(String, i64)> = nationalities.iter().take(NATIONALITIES).collect();
    let nationality_chart = if shown.is_empty() {
        String::new()
    } else {
        charts::bars(
            &format!("{name}: foreign living donors by nationality"),
            "donors",
            &shown.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
            &shown.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            "nationalities-h",
        )?
    };
    let licences = history
        .iter()
        .map(|v| LicenceRow {
            version: v.version,
            recorded_at: when(&v.recorded_at),
            name: v.clinic.name.clone(),
            status: v.clinic.status.to_string(),
            organs: v
                .clinic
                .licensed_organs
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            valid_from: when(&v.clinic.licence_valid_from),
            valid_until: v
                .clinic
                .licence_valid_until
                .as_ref()
                .map(when)
                .unwrap_or_else(|| "–".to_owned()),
        })
        .collect();
    let page = ClinicPage {
        nav: Nav::of(&signed),
        transplants_chart,
        share_chart,
        nationality_chart,
        limit: format!("{:.0}%", limit * 100.0),
        nationalities,
        clinic_id,
        licences,
        flags: flags.flags.iter().map(FlagRow::from).collect(),
        months,
    };
    Ok((StatusCode::OK, Html(page.render()?)).into_response())
}

impl From<ChartError> for PageError {
    fn from(err: ChartError) -> Self {
        tracing::error!(error = %err, "console: chart failed");
        PageError::Internal
    }
}
