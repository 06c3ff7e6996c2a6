//! Integration tests: the real server on a socket, a real Postgres.
//! One binary so the tree links once.

mod helpers;

mod access;
mod activity;
mod audit;
mod cases;
mod cli;
mod concurrency;
mod console;
mod faults;
mod federation;
mod hostile;
mod import;
mod ingest;
mod investigation;
mod lanes;
mod ledger;
mod limits;
mod logs;
mod privacy;
mod registry;
mod rescan;
mod scenarios;
mod sealing;
mod server;
mod telemetry;
mod tenants;
mod tls;
mod validation;
mod watch;
