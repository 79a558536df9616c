//! `peftrain`: the coordinator and command line. Commands that need tensors hand over to
//! `peftrain-worker` processes; this binary never links libtorch.

use std::process::ExitCode;

use clap::Parser;
use peftrain::app::{self, PredictConfig, Workers};
use peftrain::cli::{Cli, Command, LocalArgs};
use peftrain::data::Split;

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PEFTRAIN_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}

fn local(l: &LocalArgs) -> Workers {
    Workers::Local {
        device: l.device.clone(),
        threads: l.threads,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Replaces this process with `peftrain-worker` (git-style subcommand).
fn exec_worker(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = peftrain::local::worker_binary().map_err(|e| anyhow::anyhow!(e))?;
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", bin.display()))
}

fn params(p: &peftrain::cli::ParamsCmd) -> anyhow::Result<()> {
    let bin = peftrain::local::worker_binary().map_err(|e| anyhow::anyhow!(e))?;
    let out = std::process::Command::new(&bin)
        .arg("params")
        .arg("--model")
        .arg(&p.model)
        .args(["--method", &p.method, "--bitfit-scope", &p.bitfit_scope])
        .args(["--lora-r", &p.lora_r.to_string(), "--lora-targets", &p.lora_targets])
        .args(["--num-labels", &p.num_labels.to_string()])
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("{}", err.trim().trim_start_matches("peftrain-worker: error: "));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (t, a) = (v["trainable"].as_u64().unwrap_or(0), v["all"].as_u64().unwrap_or(0));
    println!("{}", app::peft_line(t, a));
    Ok(())
}

fn predict(cmd: &peftrain::cli::PredictCmd) -> anyhow::Result<()> {
    let mut cfg = cmd.train.to_config();
    if let Some(dir) = &cmd.adapter {
        app::apply_adapter_method(&mut cfg, dir)?;
        cfg.init_adapter = Some(dir.clone());
    }
    let split = Split::parse(&cmd.split).ok_or_else(|| anyhow::anyhow!("--split {:?}: expected dev or test", cmd.split))?;
    let p = PredictConfig {
        train: cfg,
        split,
        output: cmd.output.clone(),
        with_logits: cmd.with_logits,
    };
    let n = runtime()?.block_on(app::run_predict(&p, &local(&cmd.local), &cmd.net.to_args()))?;
    eprintln!("wrote {n} predictions to {}", cmd.output.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match &cli.command {
        Command::Train(t) => runtime().and_then(|rt| rt.block_on(app::run_training(&t.train.to_config(), &local(&t.local), &t.net.to_args())).map(|_| ())),
        Command::Coordinator(c) => runtime().and_then(|rt| {
            rt.block_on(app::run_training(&c.train.to_config(), &Workers::Remote { listen: c.listen }, &c.net.to_args()))
                .map(|_| ())
        }),
        Command::Worker { args } => exec_worker(args),
        Command::Params(p) => params(p),
        Command::Predict(p) => predict(p),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peftrain: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
