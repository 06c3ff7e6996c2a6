//! Flags exported as CSV, page by page: `ExportFlags` streams it, and any
//! other face of the service (the auditors' console's `/flags.csv`) can
//! serve the same bytes. Every flag exported is written to the access log
//! before its row leaves, one entry per flag, after one entry naming the
//! export's filter.

use futures::Stream;

use crate::domain::FlagFilter;
use crate::store::investigate::Read;
use crate::store::{Store, StoreError};
use crate::wire::flags_csv::{self, CsvError};

/// Flags read per page, and so per CSV chunk.
pub const PAGE: i64 = 500;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CSV could not be written.
    #[error(transparent)]
    Csv(#[from] CsvError),
}

/// Who reads, as the access log records it (owned, for a stream that
/// outlives the call's borrow).
#[derive(Debug, Clone)]
pub struct Reader {
    /// The API key used.
    pub key_id: String,
    /// The person or system behind it.
    pub principal: String,
    /// The caller's trace id, if it sent one.
    pub trace_id: Option<String>,
    /// The service's id of the call.
    pub own_trace_id: Option<String>,
}

impl Reader {
    /// As the store takes it.
    pub fn actor(&self) -> crate::store::flags::Actor<'_> {
        crate::store::flags::Actor {
            key_id: &self.key_id,
            principal: &self.principal,
            issued_by: None,
            trace_id: self.trace_id.as_deref(),
            own_trace_id: self.own_trace_id.as_deref(),
        }
    }
}

/// The access log's name for reads through `ExportFlags`.
pub const ACTION: &str = "ExportFlags";

enum Next {
    Header,
    Page(Option<i64>),
    Done,
}

struct Export {
    store: Store,
    filter: FlagFilter,
    reader: Reader,
    action: &'static str,
}

/// The flags `filter` lets through as CSV, newest first: the header row
/// first, then one chunk per page of [`PAGE`] flags, each ending at a row's
/// end. `action` names the reads in the access log.
pub fn flags_csv(
    store: Store,
    filter: FlagFilter,
    reader: Reader,
    action: &'static str,
) -> impl Stream<Item = Result<Vec<u8>, ExportError>> + Send + 'static {
    let export = Export {
        store,
        filter,
        reader,
        action,
    };
    futures::stream::try_unfold((export, Next::Header), |(export, next)| async move {
        match next {
            Next::Header => {
                let read = Read {
                    resource: "export",
                    resource_id: format!("{:?}", export.filter),
                };
                export
                    .store
                    .record_reads(&export.reader.actor(), export.action, &[read])
                    .await?;
                Ok(Some((flags_csv::header()?, (export, Next::Page(None)))))
            }
            Next::Page(before) => {
                let page = export
                    .store
                    .list_flags(&export.filter, before, PAGE)
                    .await?;
                if page.flags.is_empty() {
                    return Ok(None);
                }
                let reads: Vec<Read> = page
                    .flags
                    .iter()
                    .map(|f| Read {
                        resource: "flag",
                        resource_id: f.id.to_string(),
                    })
                    .collect();
                export
                    .store
                    .record_reads(&export.reader.actor(), export.action, &reads)
                    .await?;
                let chunk = flags_csv::rows(&page.flags)?;
                let next = page.next_before.map_or(Next::Done, |b| Next::Page(Some(b)));
                Ok(Some((chunk, (export, next))))
            }
            Next::Done => Ok(None),
        }
    })
}
