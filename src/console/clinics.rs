//! A clinic's page: its registry entry and licence history, its recent
//! flags, and its monthly activity (the figures `GetClinicActivity`
//! reads) as a table with a bar chart the server draws.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{Datelike, Months, NaiveDate, Utc};

use super::Console;
use super::error::PageError;
use super::session::Signed;
use super::views::{FlagRow, Nav, when};
use crate::domain::FlagFilter;
use crate::domain::activity::ClinicActivity;

/// Months of activity shown, ending with this one.
const MONTHS: u32 = 24;
/// Recent flags shown.
const RECENT_FLAGS: i64 = 20;
/// The chart's bar area, in SVG units.
const CHART_HEIGHT: i64 = 100;
/// One bar's width and gap.
const BAR: i64 = 12;

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
    /// Flags raised.
    pub flags: i64,
    /// The chart's bar: x, y and height.
    pub bar: (i64, i64, i64),
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
    /// The chart's width.
    pub chart_width: i64,
    /// The chart's height.
    pub chart_height: i64,
}

/// `GET /clinics/{id}`.
pub async fn clinic(
    State(console): State<Console>,
    signed: Signed,
    Path(clinic_id): Path<String>,
) -> Result<Response, PageError> {
    let store = &console.inner.store;
    if clinic_id.len() > 200 || !store.clinic_known(&clinic_id).await? {
        return Err(PageError::NotFound("clinic"));
    }
    let history = store.clinic_history(&clinic_id).await?;
    let today = Utc::now().date_naive();
    let until = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let from = until
        .checked_sub_months(Months::new(MONTHS - 1))
        .unwrap_or(until);
    let values = store.clinic_activity(&clinic_id, from, until).await?;
    let activity = ClinicActivity::fold(&clinic_id, from, until, values);
    let filter = FlagFilter {
        clinic_id: Some(clinic_id.clone()),
        ..FlagFilter::default()
    };
    let flags = console
        .inner
        .audit
        .list_flags(&filter, None, RECENT_FLAGS)
        .await?;
    let totals: Vec<i64> = activity
        .months
        .iter()
        .map(|(_, a)| a.transplants.values().sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let months = activity
        .months
        .iter()
        .zip(&totals)
        .enumerate()
        .map(|(i, ((month, a), total))| {
            let height = total * CHART_HEIGHT / max;
            let x = i64::try_from(i).unwrap_or(0) * BAR;
            MonthRow {
                month: month.format("%Y-%m").to_string(),
                transplants: *total,
                deceased_to_non_resident: a.deceased_to_non_resident,
                living_unrelated_foreign_donor: a.living_unrelated_foreign_donor,
                flags: a.flags_by_rule.values().sum(),
                bar: (x, CHART_HEIGHT - height, height),
            }
        })
        .collect::<Vec<_>>();
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
        chart_width: i64::try_from(months.len()).unwrap_or(0) * BAR,
        chart_height: CHART_HEIGHT,
        clinic_id,
        licences,
        flags: flags.flags.iter().map(FlagRow::from).collect(),
        months,
    };
    Ok((StatusCode::OK, Html(page.render()?)).into_response())
}
