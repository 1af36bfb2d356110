//! Structured logs through tracing: `RUST_LOG` filters, plain text or JSON.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written to standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`.
/// rustls's per-handshake warnings stay off unless `RUST_LOG` names rustls: a
/// client offering an IP address as SNI logs one per connection, so any client
/// could flood the log with them.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = filter_directives(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(QUIET_TLS));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(())
}

const QUIET_TLS: &str = "info,rustls=error";

/// The filter for a `RUST_LOG` value: the default when unset, else the value,
/// with rustls kept at errors unless the value says otherwise about it.
fn filter_directives(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        None | Some("") => QUIET_TLS.to_owned(),
        Some(v) if v.contains("rustls") => v.to_owned(),
        Some(v) => format!("{v},rustls=error"),
    }
}

#[cfg(test)]
mod tests {
    use super::filter_directives;

    #[test]
    fn rustls_stays_quiet_unless_named() {
        assert_eq!(filter_directives(None), "info,rustls=error");
        assert_eq!(filter_directives(Some("warn")), "warn,rustls=error");
        assert_eq!(
            filter_directives(Some("debug,rustls=debug")),
            "debug,rustls=debug"
        );
    }
}
