//! The runner's own logging.

use super::RunDirs;

/// Logs to stderr (`RUST_LOG`, default warnings only, so the terminal shows progress) and, with
/// everything from info up as JSON lines, to `runner.log` in the log folder.
pub(super) fn init_tracing(dirs: &RunDirs) {
    use tracing_subscriber::{
        EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
    };
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(crate::logging::colour_on_stderr())
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(stderr_filter);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dirs.logs.join("runner.log"))
        .ok();
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::sync::Arc::new(f))
            .with_filter(LevelFilter::INFO)
    });
    // A subscriber set earlier (e.g. by a test harness) wins; logging is not worth failing for.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}
