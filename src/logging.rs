//! Log output. On a terminal (and under tests) human-readable lines on stderr; the level comes
//! from `RUST_LOG` (default `info` for the daemon, `warn` for the CLI verbs, errors only for the
//! demo, whose narration is the output).

use tracing_subscriber::EnvFilter;

pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
