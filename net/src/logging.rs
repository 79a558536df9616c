//! tracing for both binaries: to stderr, as text (ANSI only on a terminal) or JSON lines;
//! `RUST_LOG` filters, defaulting to info (warn with --quiet).

pub fn init(json: bool, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(if quiet { "warn" } else { "info" }));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}
