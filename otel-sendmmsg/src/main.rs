use std::{io::Write as _, process::ExitCode};

use otel_sendmmsg::{
    cli::{self, Action, EXIT_CONFIG, EXIT_ENVIRONMENT},
    config::{Config, ConfigError},
    probes::choose::FamilyUnavailable,
    run::run,
    shutdown::StopSignals,
};
use tracing::error;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Arguments first: asking for help or the version must work whatever the environment holds
    // and whatever this process may do, and must do nothing else.
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Action::Run) => {}
        Ok(Action::Help) => return cli::print(&cli::help()),
        Ok(Action::Version) => return cli::print(&cli::version()),
        Err(unexpected) => {
            let _ = writeln!(std::io::stderr(), "{unexpected}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let config = Config::from_env();
    // A configuration that cannot be read is still reported, through the default filter.
    init_logging(config.as_ref().ok().and_then(|c| c.log_filter.as_deref()));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = otel_sendmmsg::privileges::check() {
        error!("{e}");
        return ExitCode::from(EXIT_ENVIRONMENT);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!("starting the async runtime: {e}");
            return ExitCode::from(EXIT_ENVIRONMENT);
        }
    };
    let outcome = runtime.block_on(async {
        let signals =
            StopSignals::install().map_err(|e| anyhow::anyhow!("cannot watch for SIGINT/SIGTERM: {e}"))?;
        run(config, signals).await
    });
    // An export or a metrics flush still stuck past the shutdown deadline (a collector that
    // never answers) must not hold the process: the summary is already written.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            // Asking for a family the kernel cannot give, or naming a cgroup that does not
            // exist, is the user's setting to fix.
            if e.downcast_ref::<FamilyUnavailable>().is_some() || e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::from(EXIT_ENVIRONMENT)
            }
        }
    }
}

/// Logs go to stderr (stdout carries the console spans). By default the HTTP/gRPC stacks stay
/// at warn so the exporter's own traffic cannot flood the log; `RUST_LOG` replaces that, and a
/// filter it cannot parse leaves the default.
fn init_logging(filter: Option<&str>) {
    let filter = filter.and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| {
        EnvFilter::new("info,h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,reqwest=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
