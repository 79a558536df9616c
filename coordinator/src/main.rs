//! `peftrain`: the coordinator and command line. Commands that need tensors hand over to
//! `peftrain-worker` processes; this binary never links libtorch.

use std::process::ExitCode;

use peftrain::app::{self, PredictConfig, Workers};
use peftrain::cli::{Cli, Command, LocalArgs};
use peftrain::config::TrainConfig;
use peftrain::data::Split;

fn local(l: &LocalArgs) -> Workers {
    Workers::Local { device: l.device.clone(), threads: l.threads, max_local_workers: l.max_local_workers }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Replaces this process with `peftrain-worker` (git-style subcommand).
fn exec_worker(args: &[String], log_format: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = peftrain::local::worker_binary().map_err(|e| anyhow::anyhow!(e))?;
    let err = std::process::Command::new(&bin).arg("--log-format").arg(log_format).args(args).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", bin.display()))
}

/// peft's trainable-parameter line from config.json alone: nothing is built or allocated.
fn params(p: &peftrain::cli::ParamsCmd) -> anyhow::Result<()> {
    use peftrain_spec::check::int;
    use peftrain_spec::counts::counts;
    if !p.model.is_dir() {
        return Err(app::usage(format!("{}: model directory not found", p.model.display())));
    }
    if !p.model.join("config.json").is_file() {
        return Err(app::usage(format!("{}: config.json not found", p.model.join("config.json").display())));
    }
    let cfg = peftrain::config::read_model_config(&p.model).map_err(app::usage)?;
    int("--num-labels", p.num_labels, 1..=1 << 16).map_err(app::usage)?;
    let typed = p.method.method();
    typed.validate().map_err(app::usage)?;
    let c = counts(&cfg, p.num_labels as i64, &typed);
    println!("{}", app::peft_line(c.trainable as u64, c.all as u64));
    Ok(())
}

fn eval(cmd: &peftrain::cli::EvalCmd, mut cfg: peftrain::config::TrainConfig) -> anyhow::Result<()> {
    if let Some(dir) = &cmd.adapter {
        app::apply_adapter_method(&mut cfg, dir)?;
        cfg.init_adapter = Some(dir.clone());
    }
    let split = Split::parse(&cmd.split).ok_or_else(|| anyhow::anyhow!("--split {:?}: expected dev or train", cmd.split))?;
    let r = runtime()?.block_on(app::run_eval(&cfg, split, &local(&cmd.local), &cmd.net.to_args()))?;
    // The Trainer's evaluate() keys: eval_loss, eval_<metric>..., and the run's size and time.
    let mut out = r.log_entries();
    out.insert("eval_samples".into(), serde_json::json!(r.examples));
    out.insert("eval_runtime".into(), serde_json::json!(r.runtime));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// Hands over to `peftrain-worker merge`, with the method read from the adapter.
fn merge(m: &peftrain::cli::MergeCmd) -> anyhow::Result<()> {
    let model = if m.model.is_dir() {
        m.model.clone()
    } else {
        peftrain::hub::resolve_model(&m.model.display().to_string(), &peftrain::hub::HubOptions::from_env())?
    };
    peftrain::outdir::check_no_overlap("--output", &m.output, &[("--model", &model), ("--adapter", &m.adapter)]).map_err(app::usage)?;
    let mut cfg = peftrain::config::TrainConfig::for_model(model.clone()).map_err(|e| anyhow::anyhow!(e))?;
    app::apply_adapter_method(&mut cfg, &m.adapter)?;
    let bin = peftrain::local::worker_binary().map_err(|e| anyhow::anyhow!(e))?;
    let out = std::process::Command::new(&bin)
        .arg("merge")
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(&m.adapter)
        .arg("--output")
        .arg(&m.output)
        .args(cfg.method.to_flags())
        // The labels the weights were trained on (none for a peft adapter: the worker counts
        // them from its head).
        .args(cfg.labels.as_ref().map(|l| ["--labels".to_string(), serde_json::to_string(l).unwrap_or_default()]).into_iter().flatten())
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().last().unwrap_or("").trim_start_matches("peftrain-worker: error: ").to_string();
        return Err(if out.status.code() == Some(2) { app::usage(line) } else { anyhow::anyhow!(line) });
    }
    println!("merged checkpoint written to {}", m.output.display());
    Ok(())
}

fn push(p: &peftrain::cli::PushCmd) -> anyhow::Result<()> {
    let req = peftrain::push::PushRequest {
        dir: p.dir.clone(),
        repo_id: p.repo_id.clone(),
        revision: p.revision.clone(),
        private: p.private,
        commit_message: p.commit_message.clone(),
    };
    let done = peftrain::push::push(&req, &peftrain::hub::HubOptions::from_env()).map_err(|e| {
        if e.is_usage() {
            app::usage(e.to_string())
        } else {
            e.into()
        }
    })?;
    println!("pushed {} files ({} through LFS) to {}: {}", done.files, done.lfs_files, done.repo_id, done.commit_url);
    Ok(())
}

fn report(r: &peftrain::cli::ReportCmd) -> anyhow::Result<()> {
    // The runs may lie inside the report's directory (compare's layout), never the reverse: a
    // report written into a run would replace that run's own report.md and curves.png.
    let out = peftrain::outdir::canonical(&r.output_dir);
    if let Some(run) = r.runs.iter().find(|d| out.starts_with(peftrain::outdir::canonical(d))) {
        return Err(app::usage(format!(
            "--output-dir {} is inside --runs {}: a command never writes where it reads",
            r.output_dir.display(),
            run.display()
        )));
    }
    let runs = r.runs.iter().map(|d| peftrain::compare::RunRecord::read(d)).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow::anyhow!(e))?;
    let (md, png) = peftrain::compare::write_report(&r.output_dir, &r.title, &runs).map_err(|e| anyhow::anyhow!(e))?;
    println!("report: {} | plot: {}", md.display(), png.display());
    Ok(())
}

fn predict(cmd: &peftrain::cli::PredictCmd) -> anyhow::Result<()> {
    let mut cfg = cmd.train.clone().with_default_glue_dir();
    if let Some(dir) = &cmd.adapter {
        app::apply_adapter_method(&mut cfg, dir)?;
        cfg.init_adapter = Some(dir.clone());
    }
    let split = Split::parse(&cmd.split).ok_or_else(|| anyhow::anyhow!("--split {:?}: expected dev or test", cmd.split))?;
    let p = PredictConfig { train: cfg, split, output: cmd.output.clone(), with_logits: cmd.with_logits };
    let n = runtime()?.block_on(app::run_predict(&p, &local(&cmd.local), &cmd.net.to_args()))?;
    eprintln!("wrote {n} predictions to {}", cmd.output.display());
    Ok(())
}

/// `--config FILE` (or PEFTRAIN_CONFIG): each key becomes the value of its flag's environment
/// variable unless that variable is already set, which gives exactly the documented precedence
/// (command line > environment > file > defaults) through clap's own rules.
fn apply_config_file(args: &[String]) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--config=").map(String::from)))
        .or_else(|| std::env::var("PEFTRAIN_CONFIG").ok());
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    if path.ends_with(".json") {
        return apply_training_arguments(args, &path, &text);
    }
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| anyhow::anyhow!("{path}: {}", e.to_string().lines().next().unwrap_or("")))?;
    let cmd = Cli::command();
    let sub = config_subcommand(&cmd, args)?;
    for (key, value) in table {
        let id = key.replace('-', "_");
        // A subcommand's flags, or the global ones (`quiet`, `log_format`) the root declares.
        let arg = sub
            .get_arguments()
            .chain(cmd.get_arguments())
            .find(|a| a.get_id().as_str() == id)
            .ok_or_else(|| anyhow::anyhow!("{path}: unknown key `{key}` (keys are the flags of `peftrain {}`)", sub.get_name()))?;
        let env = arg.get_env().ok_or_else(|| anyhow::anyhow!("{path}: `{key}` cannot be set from a file"))?;
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => anyhow::bail!("{path}: `{key}` = {other}: expected a string, number, boolean or list"),
        };
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, text);
        }
    }
    Ok(())
}

/// The subcommand of the command line whose flags a config file fills in.
fn config_subcommand<'a>(cmd: &'a clap::Command, args: &[String]) -> anyhow::Result<&'a clap::Command> {
    args.iter()
        .skip(1)
        .find_map(|a| cmd.find_subcommand(a))
        .ok_or_else(|| anyhow::anyhow!("--config needs a subcommand (train, coordinator, predict)"))
}

/// `--config args.json`, a TrainingArguments dump: its shared keys as flags (through their
/// environment variables, below the command line), the others named in one warning.
fn apply_training_arguments(args: &[String], path: &str, text: &str) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{path}: not a JSON object: {e}"))?;
    if !peftrain::hf_args::is_training_arguments(&v) {
        anyhow::bail!(
            "{path}: a JSON --config is a TrainingArguments dump (TrainingArguments.to_json_string()); peftrain's own flags go in a TOML file"
        );
    }
    let (set, unsupported) = peftrain::hf_args::flags(&v).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let cmd = Cli::command();
    let sub = config_subcommand(&cmd, args)?;
    for (id, value) in set {
        let Some(env) = sub.get_arguments().find(|a| a.get_id().as_str() == id).and_then(|a| a.get_env()) else { continue };
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, value);
        }
    }
    if !unsupported.is_empty() {
        eprintln!("peftrain: warning: {path}: TrainingArguments peftrain does not support, not applied: {}", unsupported.join(", "));
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Err(e) = apply_config_file(&argv) {
        eprintln!("peftrain: error: {}", peftrain_net::logging::error_line(e.as_ref()));
        return ExitCode::from(2);
    }
    let cli: Cli = match peftrain_spec::parse_cli("peftrain") {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    peftrain_net::logging::init(cli.log_format == "json", cli.quiet);
    let quiet = cli.quiet;
    let config = |t: &TrainConfig| {
        let mut c = t.clone().with_default_glue_dir();
        c.quiet = quiet;
        c
    };
    let print = match &cli.command {
        Command::Train(t) if t.file.print_config => Some(&t.train),
        Command::Coordinator(c) if c.file.print_config => Some(&c.train),
        _ => None,
    };
    if let Some(t) = print {
        println!("{}", serde_json::to_string_pretty(&t.clone().with_default_glue_dir()).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let result = match &cli.command {
        Command::Train(t) => {
            runtime().and_then(|rt| rt.block_on(app::run_training(&config(&t.train), &local(&t.local), &t.net.to_args())).map(|_| ()))
        }
        Command::Coordinator(c) => {
            let run =
                runtime().and_then(|rt| rt.block_on(app::run_training(&config(&c.train), &Workers::Remote { listen: c.listen }, &c.net.to_args())));
            match run {
                Ok(summary) if summary.stopped.is_some() && c.signal_exit_code != 0 => return ExitCode::from(c.signal_exit_code),
                // Stopped before training started (waiting for workers): nothing to checkpoint,
                // and still a stop on a signal, not a failure.
                Err(e) if c.signal_exit_code != 0 && peftrain_net::signals::requested_in_process().is_some() => {
                    eprintln!("peftrain: {}", peftrain_net::logging::error_line(e.as_ref()));
                    return ExitCode::from(c.signal_exit_code);
                }
                r => r.map(|_| ()),
            }
        }
        Command::Eval(e) => eval(e, config(&e.train)),
        Command::Compare(c) => runtime().and_then(|rt| {
            let (md, png) = rt.block_on(app::run_compare(&config(&c.train), &c.methods, &local(&c.local), &c.net.to_args()))?;
            println!("report: {} | plot: {}", md.display(), png.display());
            Ok(())
        }),
        Command::Merge(m) => merge(m),
        Command::Report(r) => report(r),
        Command::Push(p) => push(p),
        Command::Worker { args } => exec_worker(args, &cli.log_format),
        Command::Params(p) => params(p),
        Command::Predict(p) => predict(p),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peftrain: error: {}", peftrain_net::logging::error_line(e.as_ref()));
            // Refused input exits 2, as clap's usage errors do; a run that failed exits 1.
            if e.downcast_ref::<app::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
