//! The `zenedge` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use zenedge::cli::{self, Command};
use zenedge::telemetry::{events::DaemonFailed, InternalEvent};

fn main() -> ExitCode {
    zenedge::limit_malloc_arenas();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if !matches!(cli.command, Command::Run | Command::Demo { .. }) {
        // A CLI verb piped into `head` should end quietly, as Unix tools do, rather than
        // panic on a closed stdout. Not for the daemon: there a closed socket must be an error
        // to handle, not a signal that kills the process.
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    zenedge::logging::init(match cli.command {
        Command::Run => "info",
        Command::Demo { .. } => "zenedge=error,rumqttd=off",
        _ => "warn",
    });
    zenedge::delivery::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zenedge: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::SOFTWARE);
        }
    };
    match cli.command {
        Command::Run => {
            let config = match zenedge::config::Config::load(&cli::config_path(&cli)) {
                Ok(c) => c,
                Err(e) => return cli::config_exit(&e),
            };
            let result = runtime.block_on(zenedge::daemon::run_reloadable(
                cli::config_path(&cli),
                config,
                zenedge::daemon::stop_signal(),
            ));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    DaemonFailed {
                        error: &format!("{e:#}"),
                    }
                    .emit();
                    eprintln!("zenedge: {e:#}");
                    ExitCode::from(cli::exit::SOFTWARE)
                }
            }
        }
        Command::Demo { once } => {
            match runtime.block_on(zenedge::demo::run(once, zenedge::daemon::stop_signal())) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(cli::exit::NEGATIVE),
                Err(e) => {
                    eprintln!("zenedge demo: {e:#}");
                    ExitCode::from(cli::exit::SOFTWARE)
                }
            }
        }
        _ => runtime.block_on(cli::dispatch(&cli)),
    }
}
