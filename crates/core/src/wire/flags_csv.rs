//! Flags as CSV (RFC 4180, UTF-8, CRLF line ends), for the spreadsheets
//! auditors use: `ExportFlags` streams it and the auditors' console serves
//! it, both from here.
//!
//! A spreadsheet reads a cell starting with `=`, `+`, `-` or `@` (and, in
//! some, a tab or carriage return) as a formula; a hospital controls
//! several of these fields (its record ids, clinic ids), so such cells get a
//! leading apostrophe, which spreadsheets show as text and do not evaluate
//! (OWASP's advice on CSV injection).

use std::borrow::Cow;

use crate::domain::FlagView;

/// The columns, in order.
pub const HEADER: [&str; 16] = [
    "flag_id",
    "record_id",
    "rule_id",
    "rule_version",
    "severity",
    "status",
    "raised_at",
    "updated_at",
    "hospital_id",
    "clinic_id",
    "external_record_id",
    "record_version",
    "cleared_in_record_version",
    "evidence_record_ids",
    "dismissal_proposed_by",
    "explanation",
];

/// Writing CSV into memory failed (it does not, short of running out of it).
#[derive(Debug, thiserror::Error)]
#[error("cannot write CSV: {0}")]
pub struct CsvError(#[from] csv::Error);

/// The header row.
pub fn header() -> Result<Vec<u8>, CsvError> {
    write(|w| w.write_record(HEADER))
}

/// One row per flag, in the order given.
pub fn rows(flags: &[FlagView]) -> Result<Vec<u8>, CsvError> {
    write(|w| {
        for f in flags {
            let evidence: Vec<String> = f.evidence.iter().map(|r| r.0.to_string()).collect();
            let cells = [
                f.id.to_string(),
                f.record_id.0.to_string(),
                f.rule_id.clone(),
                f.rule_version.to_string(),
                f.severity.as_str().to_owned(),
                f.status.as_str().to_owned(),
                f.raised_at.to_rfc3339(),
                f.updated_at.to_rfc3339(),
                f.hospital_id.clone(),
                f.clinic_id.clone(),
                f.external_record_id.clone(),
                f.record_version.to_string(),
                f.cleared_in_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                evidence.join(" "),
                f.dismissal_proposed_by.clone().unwrap_or_default(),
                f.explanation.clone(),
            ];
            w.write_record(cells.iter().map(|c| neutralise(c).into_owned()))?;
        }
        Ok(())
    })
}

/// The cell as a spreadsheet should show it: text, never a formula.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

fn write(
    fill: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> Result<(), csv::Error>,
) -> Result<Vec<u8>, CsvError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    fill(&mut w)?;
    w.into_inner().map_err(|e| CsvError(e.into_error().into()))
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::domain::{FlagStatus, RecordId, Severity};

    fn flag(external: &str, explanation: &str) -> FlagView {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        FlagView {
            id: 7,
            record_id: RecordId(3),
            rule_id: "ABO_INCOMPATIBLE".into(),
            rule_version: 1,
            severity: Severity::High,
            explanation: explanation.into(),
            evidence: vec![RecordId(1), RecordId(2)],
            status: FlagStatus::Open,
            revision: 1,
            raised_at: at,
            updated_at: at,
            hospital_id: "H-DE-001".into(),
            clinic_id: "DE-BER-01".into(),
            external_record_id: external.into(),
            record_version: 1,
            cleared_in_version: None,
            dismissal_proposed_by: None,
        }
    }

    fn parse(bytes: &[u8]) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn rows_parse_back_under_the_header() {
        let mut doc = header().unwrap();
        doc.extend(rows(&[flag("R-1", "donor A, recipient O; \"quoted\"\nline")]).unwrap());
        let parsed = parse(&doc);
        assert_eq!(parsed[0], HEADER);
        assert_eq!(parsed[1][0], "7");
        assert_eq!(parsed[1][13], "1 2");
        assert_eq!(parsed[1][15], "donor A, recipient O; \"quoted\"\nline");
        assert!(doc.ends_with(b"\r\n"));
    }

    #[test]
    fn formula_cells_become_text() {
        for evil in ["=HYPERLINK(\"x\")", "+1", "-1+1", "@SUM(A1)", "\tx", "\rx"] {
            let parsed = parse(&rows(&[flag(evil, evil)]).unwrap());
            assert_eq!(parsed[0][10], format!("'{evil}"));
            assert_eq!(parsed[0][15], format!("'{evil}"));
        }
        assert_eq!(neutralise("plain"), "plain");
        assert_eq!(neutralise("a=b"), "a=b");
    }
}
