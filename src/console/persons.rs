//! A person's timeline: every record naming one donor's or one recipient's
//! fingerprint, in transplant order, read through the record search and
//! logged as `SearchRecords` is.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::Console;
use super::error::PageError;
use super::session::Signed;
use super::views::{Nav, when};
use crate::domain::search::RecordFilter;
use crate::domain::{Fingerprint, Violations};

/// The most records a timeline shows.
const MAX_RECORDS: i64 = 500;

/// One record on the timeline.
#[derive(Debug, Clone)]
pub struct TimelineRow {
    /// The service's record id.
    pub record_id: i64,
    /// When transplanted.
    pub transplanted_at: String,
    /// The organ.
    pub organ: String,
    /// The clinic.
    pub clinic_id: String,
    /// The hospital.
    pub hospital_id: String,
    /// The hospital's record id.
    pub external_record_id: String,
    /// Its flags: id and rule.
    pub flags: Vec<(i64, String)>,
}

/// A donor's or a recipient's records.
#[derive(Template)]
#[template(path = "console/person.html")]
pub struct PersonPage {
    /// The header.
    pub nav: Nav,
    /// "Donor" or "Recipient".
    pub who: &'static str,
    /// The fingerprint, hex.
    pub fingerprint: String,
    /// The records, oldest transplant first.
    pub rows: Vec<TimelineRow>,
    /// Whether more records exist than are shown.
    pub truncated: bool,
}

/// A full fingerprint in hex, or the violation naming it.
fn fingerprint(raw: &str) -> Result<Fingerprint, PageError> {
    hex::decode(raw.trim())
        .ok()
        .and_then(|b| Fingerprint::from_slice(&b))
        .ok_or_else(|| {
            let mut v = Violations::default();
            v.add("fingerprint", "must be a fingerprint: 64 hex digits");
            PageError::Invalid(v)
        })
}

async fn timeline(
    console: &Console,
    signed: &Signed,
    donor: bool,
    raw: &str,
) -> Result<Response, PageError> {
    let fp = fingerprint(raw)?;
    let filter = if donor {
        RecordFilter {
            donor: Some(fp),
            ..RecordFilter::default()
        }
    } else {
        RecordFilter {
            recipient: Some(fp),
            ..RecordFilter::default()
        }
    };
    let page = console
        .inner
        .investigation
        .search_records(&signed.actor(), &filter, None, MAX_RECORDS)
        .await?;
    // The search answers newest first; a timeline reads oldest first.
    let rows = page
        .records
        .iter()
        .rev()
        .map(|(r, flags)| TimelineRow {
            record_id: r.id.0,
            transplanted_at: when(&r.record.transplanted_at),
            organ: r.record.organ.to_string(),
            clinic_id: r.record.clinic_id.clone(),
            hospital_id: r.record.hospital_id.clone(),
            external_record_id: r.record.external_record_id.clone(),
            flags: flags.iter().map(|f| (f.id, f.rule_id.clone())).collect(),
        })
        .collect();
    let page = PersonPage {
        nav: Nav::of(signed),
        who: if donor { "Donor" } else { "Recipient" },
        fingerprint: hex::encode(fp.as_bytes()),
        rows,
        truncated: page.next.is_some(),
    };
    Ok((StatusCode::OK, Html(page.render()?)).into_response())
}

/// `GET /donors/{fingerprint}`.
pub async fn donor(
    State(console): State<Console>,
    signed: Signed,
    Path(fp): Path<String>,
) -> Result<Response, PageError> {
    timeline(&console, &signed, true, &fp).await
}

/// `GET /recipients/{fingerprint}`.
pub async fn recipient(
    State(console): State<Console>,
    signed: Signed,
    Path(fp): Path<String>,
) -> Result<Response, PageError> {
    timeline(&console, &signed, false, &fp).await
}
