//! Tests of ingest.
