//! peftrain-spec: what the coordinator (no libtorch) and the workers (libtorch) must read the
//! same way — the run's method, base dtype, padding and all-reduce, typed, with their wire form; the
//! model's `config.json` with its bounds, parameter counts derived from it alone, the model's
//! identity digest, and the range checks applied to every number from a flag, a file or the
//! wire before it is used or allocated.

pub mod check;
pub mod collective;
pub mod digest;
pub mod dtype;
pub mod method;
pub mod model_config;
pub mod optimizer;
pub mod padding;
pub mod paths;
pub mod state;
pub mod task;
pub mod torch_rng;

pub use collective::AllReduce;
pub use dtype::BaseDtype;
pub use method::{BitFitScope, Ia3Params, LoraParams, Method, MethodArgs, MethodKind, MethodRules};
pub use model_config::counts;
pub use model_config::{Activation, ConfigError, ModelConfig, ModelType};
pub use padding::Padding;

/// A flag's value parsed by the type's own `FromStr`, for clap: the refusal is the type's one
/// message (`"tight": expected auto, free or padded`), which the binaries print after the flag.
pub fn flag<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse()
}

/// One line for a refused command line: `--padding "tight": expected auto, free or padded`
/// for a value its type refused, clap's own first line for anything else.
pub fn usage_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::ValueValidation {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(a)) => a.split_whitespace().next().unwrap_or("").to_string(),
            _ => String::new(),
        };
        if let Some(why) = std::error::Error::source(e) {
            return format!("{arg} {why}");
        }
    }
    let text = e.render().to_string();
    let kept: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")).collect();
    let line = kept.join(" ");
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "invalid command line".into()
    } else {
        line.to_string()
    }
}

/// Parses the command line of a binary: help and version print as clap prints them; any
/// refusal is one line on stderr. Err: the exit status (2 for a refusal, as clap's own).
pub fn parse_cli<C: clap::Parser>(bin: &str) -> Result<C, u8> {
    use clap::error::ErrorKind;
    C::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.use_stderr() {
                2
            } else {
                0
            }
        }
        _ => {
            eprintln!("{bin}: error: {}", usage_line(&e));
            2
        }
    })
}
