#![forbid(unsafe_code)]

use clap::Parser;
use privreg::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // In the log format chosen (JSON for the operator's and registry's
            // pods), so a crash-looping pod's reason is one parsable line:
            // e.g. `Permission denied` creating the data directory on a volume
            // the registry's uid cannot write. Before logging is set up, the
            // subscriber is not there and this goes to stderr as text.
            if tracing::dispatcher::has_been_set() {
                tracing::error!(error = format!("{error:#}"), "privreg exits on an error");
            } else {
                eprintln!("Error: {error:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // One process-wide crypto provider, so rustls never has to guess which one.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let cli = Cli::parse();
    privreg::telemetry::init(cli.log_format)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(privreg::registry::serve(*args)),
        Command::Operator(args) => runtime.block_on(privreg::operator::run(args)),
        Command::Trust(args) => runtime.block_on(privreg::trust::run(args)),
        Command::TrustUninstall(args) => {
            runtime.block_on(privreg::operator::uninstall::request_and_wait(args))
        }
        Command::Gc(args) => privreg::registry::gc::run(&args),
        Command::Crds => {
            print!("{}", privreg::api::crds_yaml()?);
            Ok(())
        }
    };
    // Whatever is still running (a dropped reconcile's blocking work) gets a
    // moment, not a veto over the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
