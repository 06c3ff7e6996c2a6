//! The `transplant-audit` binary: parse the command line, start telemetry,
//! run the command, and exit with a status that says how it went.

use std::process::ExitCode;

use clap::Parser;

use transplant_audit::cli::{self, Cli};
use transplant_audit::telemetry::Telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match Telemetry::init(cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            e.exit_code()
        }
    };
    telemetry.shutdown();
    code
}
