//! The command line: `shiftwatch serve | reference | report | estimates | candidates export |
//! check-config`,
//! each with `--config`.
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
    /// Build the reference profile the monitor compares traffic with, from validation images
    Reference {
        /// Folder of validation images
        #[arg(long)]
        images: PathBuf,
        /// CSV with header `file,label` (class names): adds accuracy, ECE, temperature, ATC
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Where to write the profile (JSON)
        #[arg(long)]
        out: PathBuf,
        /// Samples kept at most (a seeded subsample beyond)
        #[arg(long, default_value_t = 5000)]
        max_samples: usize,
        /// Which configured model (default: the first by name)
        #[arg(long)]
        model: Option<String>,
    },
    /// Evaluate a period of the Parquet log (a folder or a bucket) with the monitor's code: one
    /// self-contained HTML report with plots, and a JSON summary
    Report {
        /// The log's root: a folder, or s3://bucket/prefix, gs://…, az://…, file:///… (the
        /// store's credentials from its standard environment variables)
        #[arg(long)]
        log: String,
        /// The reference profile of the model version to report on
        #[arg(long)]
        reference: PathBuf,
        /// Which model's partition (default: the first configured)
        #[arg(long)]
        model: Option<String>,
        /// Start of the period (RFC 3339, inclusive; default: the first prediction)
        #[arg(long)]
        from: Option<String>,
        /// End of the period (RFC 3339, exclusive; default: after the last prediction)
        #[arg(long)]
        to: Option<String>,
        /// The HTML report to write
        #[arg(long)]
        out: PathBuf,
        /// The JSON summary to write
        #[arg(long)]
        json: Option<PathBuf>,
        /// Time buckets the period is cut into (for the plots over time)
        #[arg(long, default_value_t = 12)]
        buckets: usize,
        /// A candidate store's folder (candidates.dir): its best candidates as thumbnails
        #[arg(long)]
        candidates: Option<PathBuf>,
    },
    /// How closely each label-free accuracy estimate follows the true accuracy, on labeled
    /// folders of images and mixtures of them (a Markdown table)
    Estimates {
        /// The reference profile of the model
        #[arg(long)]
        reference: PathBuf,
        /// `name=DIR`: a folder with labels.csv (`file,label`; an empty label for an
        /// out-of-distribution image); `group/name=DIR` adds it to the group's summary
        #[arg(long, required = true)]
        traffic: Vec<String>,
        /// `name=a:0.5,b:0.5`: a mixture of traffic already named, by weight
        #[arg(long)]
        mix: Vec<String>,
        /// Predictions per window
        #[arg(long, default_value_t = 500)]
        window: usize,
        /// Windows drawn per traffic
        #[arg(long, default_value_t = 20)]
        windows: usize,
        /// Where to write the results as JSON
        #[arg(long)]
        json: Option<PathBuf>,
        /// Which configured model (default: the first by name)
        #[arg(long)]
        model: Option<String>,
    },
    /// Relabel candidates: export the best stored ones for Label Studio (offline, from the log)
    Candidates {
        #[command(subcommand)]
        action: CandidatesAction,
    },
    /// Validate the config, then load the model and run one batch (unless --skip-model)
    CheckConfig {
        /// Only validate the config file and the environment overrides
        #[arg(long)]
        skip_model: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CandidatesAction {
    /// Select from the stored candidates (scores from the Parquet log) and write a package:
    /// images/, tasks.json, label-studio.xml, manifest.csv
    Export {
        /// The package folder to create (must not exist)
        #[arg(long)]
        out: PathBuf,
        /// Candidates at most
        #[arg(long)]
        limit: Option<usize>,
        /// Which configured model (default: the first by name)
        #[arg(long)]
        model: Option<String>,
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
        Command::Candidates {
            action: CandidatesAction::Export { out, limit, model },
        } => config
            .select_model(model.as_deref())
            .and_then(|m| export_candidates(&config, m, &out, limit)),
        Command::Report {
            log,
            reference,
            model,
            from,
            to,
            out,
            json,
            buckets,
            candidates,
        } => config.select_model(model.as_deref()).and_then(|m| {
            let time = |flag: &str, v: Option<String>| -> anyhow::Result<Option<i64>> {
                v.map(|t| {
                    crate::time::parse_rfc3339(&t).ok_or_else(|| {
                        anyhow::anyhow!("{flag} {t} is not an RFC 3339 time (2026-12-06T22:00:00Z)")
                    })
                })
                .transpose()
            };
            report(
                &config,
                &crate::report::Options {
                    log,
                    reference,
                    model: m.name.clone(),
                    from: time("--from", from)?,
                    to: time("--to", to)?,
                    buckets,
                    out,
                    json,
                    candidates,
                },
            )
        }),
        Command::Estimates {
            reference,
            traffic,
            mix,
            window,
            windows,
            json,
            model,
        } => config.select_model(model.as_deref()).and_then(|m| {
            let options = estimates_options(reference, &traffic, &mix, window, windows, json)?;
            crate::telemetry::init(&config.logging);
            crate::accuracy::run(&config, m, &options).map(|_| ())
        }),
        Command::Reference {
            images,
            labels,
            out,
            max_samples,
            model,
        } => config.select_model(model.as_deref()).and_then(|m| {
            reference(
                &config,
                m,
                &crate::profile::ProfileOptions {
                    images,
                    labels,
                    out,
                    max_samples,
                    seed: 42,
                },
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn estimates_options(
    reference: PathBuf,
    traffic: &[String],
    mix: &[String],
    window: usize,
    windows: usize,
    json: Option<PathBuf>,
) -> anyhow::Result<crate::accuracy::Options> {
    let traffic = traffic
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(n, d)| (n.to_string(), PathBuf::from(d)))
                .ok_or_else(|| anyhow::anyhow!("--traffic {t} is not name=DIR"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mixes = mix
        .iter()
        .map(|m| {
            let (name, parts) = m
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--mix {m} is not name=a:0.5,b:0.5"))?;
            let parts = parts
                .split(',')
                .map(|p| {
                    let (t, w) = p
                        .split_once(':')
                        .ok_or_else(|| anyhow::anyhow!("--mix {m}: `{p}` is not name:weight"))?;
                    let w: f64 = w
                        .parse()
                        .ok()
                        .filter(|w: &f64| w.is_finite() && *w > 0.0)
                        .ok_or_else(|| {
                            anyhow::anyhow!("--mix {m}: weight `{w}` is not positive")
                        })?;
                    Ok((t.to_string(), w))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((name.to_string(), parts))
        })
        .collect::<anyhow::Result<_>>()?;
    if window == 0 || windows == 0 {
        anyhow::bail!("--window and --windows must be at least 1");
    }
    Ok(crate::accuracy::Options {
        reference,
        traffic,
        mixes,
        window,
        windows,
        seed: 7,
        json,
    })
}

fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(&config.logging);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let io_threads = config.server.io_threads(cores);
    tracing::info!(cores, io_threads, "async runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .enable_all()
        .thread_name("shiftwatch-io")
        .build()?;
    runtime.block_on(crate::server::serve(config))
}

fn reference(
    config: &Config,
    model: &crate::model::config::ModelConfig,
    options: &crate::profile::ProfileOptions,
) -> anyhow::Result<()> {
    crate::telemetry::init(&config.logging);
    let profile = crate::profile::build(config, model, options)?;
    let s = profile.summary.as_ref().expect("build writes the summary");
    println!(
        "reference profile {}: {} images ({} kept) of model {} version {}",
        options.out.display(),
        profile.n_images,
        profile.probabilities.len(),
        profile.model,
        profile.model_version
    );
    println!("  mean confidence  {:.4}", s.mean_confidence);
    if let (Some(acc), Some(ece), Some(t), Some(atc)) =
        (s.accuracy, s.ece, s.temperature, s.atc_threshold)
    {
        println!("  accuracy         {acc:.4}");
        println!("  ECE (15 bins)    {ece:.4}");
        println!("  temperature      {t:.4}");
        println!("  ATC threshold    {atc:.4}");
    } else {
        println!("  (no labels: accuracy, ECE, temperature and ATC need --labels)");
    }
    Ok(())
}

fn report(config: &Config, options: &crate::report::Options) -> anyhow::Result<()> {
    crate::telemetry::init(&config.logging);
    let monitor = match &config.monitor {
        Some(m) => m.clone(),
        None => crate::monitor::RawMonitor::default()
            .validate(&mut |_, _| {})
            .ok_or_else(|| anyhow::anyhow!("the default monitor settings do not validate"))?,
    };
    let summary = crate::report::run(options, &monitor)?;
    println!(
        "report {}: {} predictions of model {} version {} in {} files, {} buckets{}",
        options.out.display(),
        summary.rows,
        summary.model,
        summary.model_version,
        summary.files,
        summary.buckets.len(),
        options
            .json
            .as_ref()
            .map(|j| format!("; summary {}", j.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn export_candidates(
    config: &Config,
    model: &crate::model::config::ModelConfig,
    out: &std::path::Path,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    use crate::relabel::export::write_package;
    use crate::relabel::select::select;

    crate::telemetry::init(&config.logging);
    let Some(cc) = &config.candidates else {
        anyhow::bail!("candidates.enabled is false: there is no candidate store to export from");
    };
    let Some(log) = &config.log else {
        anyhow::bail!("log.enabled is false: offline export reads the prediction log");
    };
    let several = config.models.len() > 1;
    let cc = cc.for_model(&model.name, several, 0);
    let limit = limit.unwrap_or(cc.default_limit);
    let stored = crate::relabel::read_index(&cc.dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the candidate index in {}: {e}",
            cc.dir.display()
        )
    })?;
    let wanted = stored
        .iter()
        .map(|s| s.candidate.request_id.clone())
        .collect();
    let logged = crate::relabel::offline::read_predictions(&log.dir, &model.name, &wanted)?;
    let (joined, missing) = crate::relabel::offline::join(&stored, &logged);
    let labels = match config.load_model_one_session(model) {
        Ok(m) => m.spec.labels,
        Err(e) => anyhow::bail!("cannot read the model's class labels: {e}"),
    };
    let mut selection = cc.selection.clone();
    selection.classes = labels.len();
    let pool: Vec<_> = joined.iter().map(|s| s.candidate.clone()).collect();
    let chosen = select(&pool, limit, &selection);
    let mut items = Vec::with_capacity(chosen.len());
    for i in chosen {
        let s = &joined[i];
        if !labels.contains(&s.predicted_label) {
            continue;
        }
        let image = std::fs::read(cc.dir.join("images").join(&s.file)).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the stored image of {}: {e}",
                s.candidate.request_id
            )
        })?;
        items.push(s.export_item(image, &selection));
    }
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("--out must end in a folder name"))?;
    let root = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&root)?;
    let path = write_package(&root, name, &items, &labels, &cc.image_url_prefix)?;
    println!(
        "exported {} candidates to {} ({} stored, {} not in the log yet)",
        items.len(),
        path.display(),
        stored.len(),
        missing
    );
    Ok(())
}

fn check_config(path: &std::path::Path, config: &Config, skip_model: bool) -> anyhow::Result<()> {
    crate::telemetry::init(&config.logging);
    println!("config {}: valid", path.display());
    println!("  listen           {}", config.server.listen);
    for m in &config.models {
        println!("  model            {} ({})", m.name, m.path.display());
    }
    if skip_model {
        return Ok(());
    }
    let library = crate::model::resolve_library(config.runtime_library.as_deref())?;
    println!("  onnx runtime     {}", library.display());
    for m in &config.models {
        check_model(config, m)?;
    }
    println!("model loads and runs: ok");
    Ok(())
}

/// Where an `[inference]` count came from, for `check`.
fn auto_note(
    run: Option<std::time::Duration>,
    count: crate::inference::AutoCount,
    on_cuda: &str,
) -> String {
    use crate::inference::AutoCount;
    match (count, run) {
        (AutoCount::Fixed(_), _) => "set in [inference]".to_string(),
        (AutoCount::Auto, Some(run)) => {
            format!("\"auto\": one image's run {} µs", run.as_micros())
        }
        (AutoCount::Auto, None) => format!("\"auto\": {on_cuda}"),
    }
}

fn check_model(config: &Config, model: &crate::model::config::ModelConfig) -> anyhow::Result<()> {
    let loaded = config.load_model(model)?;
    println!("  {}:", model.name);
    let spec = &loaded.spec;
    let p = &spec.preprocess;
    println!("  model version    {}", spec.version);
    println!("  provider         {}", spec.execution_provider);
    println!(
        "  sessions         {} ({})",
        loaded.sessions.len(),
        auto_note(loaded.auto_run, config.inference.sessions, "one on CUDA")
    );
    println!(
        "  max batch        {} ({})",
        loaded.max_batch,
        auto_note(loaded.auto_run, config.inference.max_batch, "32 on CUDA")
    );
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
    Ok(())
}
