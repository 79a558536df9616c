//! tracing for both binaries: to stderr, as text (ANSI only on a terminal) or JSON lines;
//! `RUST_LOG` filters, defaulting to info (warn with --quiet).

pub fn init(json: bool, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(if quiet { "warn" } else { "info" }));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}

/// An error and its causes as one line, `outer: cause: root`, leaving out a cause whose text
/// the line already holds (many errors print their source in their own message, and `{:#}`
/// would then say it twice).
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    // One line: a multi-line message (a JSON parser's, a child's stderr) is folded.
    line.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("a.json: {source}")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let e = Outer { source: std::io::Error::other("no such file") };
        assert_eq!(super::error_line(&e), "a.json: no such file");
    }
}
