//! Tests of privacy.
