//! The command line: `shiftwatch serve | check-config`, each with `--config`.
//!
//! Exit codes: 0 success, 64 the config is invalid, 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};

#[derive(Debug, Parser)]
#[command(
    name = "shiftwatch",
    version,
    about = "Serve an ONNX image classifier and watch it for overconfidence and shift"
)]
pub struct Cli {
    /// Config file (TOML); every key can be overridden by SHIFTWATCH__SECTION__KEY
    #[arg(long, global = true, default_value = "config/shiftwatch.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model over HTTP until SIGTERM or SIGINT
    Serve,
    /// Validate the config, then load the model and run one batch (unless --skip-model)
    CheckConfig {
        /// Only validate the config file and the environment overrides
        #[arg(long)]
        skip_model: bool,
    },
}

/// Exit code for an invalid config (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

pub fn run(cli: Cli) -> ExitCode {
    let config = match config::load(&cli.config, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid config {}:\n{e}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Command::Serve => serve(config),
        Command::CheckConfig { skip_model } => check_config(&cli.config, &config, skip_model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(&config.logging);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shiftwatch-io")
        .build()?;
    runtime.block_on(crate::server::serve(config))
}

fn check_config(path: &std::path::Path, config: &Config, skip_model: bool) -> anyhow::Result<()> {
    crate::telemetry::init(&config.logging);
    println!("config {}: valid", path.display());
    println!("  listen           {}", config.server.listen);
    println!(
        "  model            {} ({})",
        config.model.name,
        config.model.path.display()
    );
    if skip_model {
        return Ok(());
    }
    let library = crate::model::resolve_library(config.runtime_library.as_deref())?;
    println!("  onnx runtime     {}", library.display());
    let loaded = crate::model::load(config)?;
    let spec = &loaded.spec;
    let p = &spec.preprocess;
    println!("  model version    {}", spec.version);
    println!("  provider         {}", spec.execution_provider);
    println!(
        "  input            {} {:?} ({})",
        spec.input_name, spec.input_shape, spec.described_by
    );
    println!(
        "  preprocess       {}x{} {:?} {:?} resize={:?} scale={} mean={:?} std={:?}",
        p.width, p.height, p.color, p.layout, p.resize, p.scale, p.mean, p.std
    );
    println!(
        "  outputs          {} ({:?}, {} classes){}",
        spec.probabilities_output,
        spec.output_kind,
        spec.num_classes(),
        match (&spec.embedding_output, spec.embedding_dim) {
            (Some(n), Some(d)) => format!(", embedding {n} [{d}]"),
            _ => String::new(),
        }
    );
    println!("model loads and runs: ok");
    Ok(())
}
