//! Development tools of transplant-audit, apart from what the service needs
//! to serve: the project-managed local Postgres ([`localdb`]), which the
//! local default and the tests start, and the load generator (the `loadgen`
//! binary).

pub mod localdb;
