//! `shiftwatch estimates`: how closely each label-free accuracy estimate follows the true
//! accuracy, on labeled folders of images (a `labels.csv` of `file,label`, an empty label for an
//! out-of-distribution image, counted wrong whatever the model says) and on mixtures of them.
//!
//! Every image goes through the serving path (decode, preprocess, the model, input statistics,
//! image descriptor, the out-of-distribution search, the correctness model); windows of
//! `--window` predictions are drawn from each folder or mixture (seeded), and each window is
//! evaluated by the monitor's own code (`monitor::evaluate`), so the numbers are those
//! `/v1/monitor` would give. Prints a Markdown table: per traffic, the true accuracy, how far
//! confidence exceeds it, each method's mean absolute error and worst error, how often the
//! overconfidence verdict alerts, the shift kind most windows get, and BBSE's L1 error on the
//! class mix where every image is labeled. Groups (`group/name=DIR`) get summary rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::config::Config;
use crate::image_stats::describe;
use crate::model;
use crate::monitor::correctness::{Correctness, Inputs, NEIGHBORS};
use crate::monitor::estimates::ShiftKind;
use crate::monitor::evaluate::{Settings, Status, evaluate};
use crate::monitor::reference::{Reference, ReferenceProfile};
use crate::monitor::window::WindowData;
use crate::prediction::summarize;
use crate::preprocess;
use crate::relabel::ood::OodDetector;
use crate::stats::random::SplitMix64;

/// Options of `shiftwatch estimates`.
#[derive(Debug, Clone)]
pub struct Options {
    pub reference: PathBuf,
    /// (name, folder); a name `group/x` puts the traffic in `group`'s summary.
    pub traffic: Vec<(String, PathBuf)>,
    /// (name, [(traffic name, weight)]).
    pub mixes: Vec<(String, Vec<(String, f64)>)>,
    pub window: usize,
    pub windows: usize,
    pub seed: u64,
    pub json: Option<PathBuf>,
}

/// One image as served.
#[derive(Debug, Clone)]
struct Row {
    probabilities: Vec<f32>,
    class: usize,
    confidence: f32,
    entropy: f32,
    inputs: [f32; 6],
    embedding: Option<Vec<f32>>,
    correct: f32,
    /// `None`: out of distribution.
    truth: Option<usize>,
}

/// The methods in the table's order.
const METHODS: [&str; 9] = [
    "served",
    "correctness",
    "atc",
    "atc_ne",
    "doc",
    "cot",
    "cott",
    "nuclear",
    "ac",
];

/// One traffic's results.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficResult {
    pub name: String,
    pub windows: usize,
    pub true_accuracy: f64,
    /// Mean confidence minus true accuracy.
    pub confidence_excess: f64,
    pub errors: MethodErrors,
    /// Per method, every window's signed error (for the summaries).
    #[serde(skip)]
    signed: BTreeMap<String, Vec<f64>>,
    pub overconfidence_alert_share: f64,
    /// Per window: mean confidence minus true accuracy, and whether the overconfidence
    /// verdict alerted.
    pub window_confidence_excess: Vec<f64>,
    pub window_overconfidence_alert: Vec<bool>,
    pub shift_kinds: BTreeMap<String, usize>,
    /// BBSE's mean L1 error on the class mix (every image labeled), and its worst.
    pub bbse_l1: Option<(f64, f64)>,
}

fn read_folder(dir: &Path, labels: &[String]) -> anyhow::Result<Vec<(PathBuf, Option<usize>)>> {
    let csv = dir.join("labels.csv");
    let mut out = Vec::new();
    for (file, label) in crate::profile::read_label_rows(&csv)? {
        let truth = if label.is_empty() {
            None
        } else {
            Some(
                labels
                    .iter()
                    .position(|l| *l == label)
                    .with_context(|| format!("{}: unknown label `{label}`", csv.display()))?,
            )
        };
        out.push((dir.join(file), truth));
    }
    if out.is_empty() {
        bail!("{} lists no images", csv.display());
    }
    Ok(out)
}

/// Runs `shiftwatch estimates` and returns every traffic's results (printed as Markdown too).
pub fn run(
    config: &Config,
    model_config: &crate::model::config::ModelConfig,
    options: &Options,
) -> anyhow::Result<Vec<TrafficResult>> {
    let text = std::fs::read(&options.reference)
        .with_context(|| format!("cannot read {}", options.reference.display()))?;
    let profile: ReferenceProfile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a reference profile", options.reference.display()))?;
    let mut loaded = config
        .load_model_one_session(model_config)
        .context("cannot load the model")?;
    let spec = loaded.spec.clone();
    if profile.model_version != spec.version {
        bail!(
            "the profile was built for model version {}, the model is {}",
            profile.model_version,
            spec.version
        );
    }
    let monitor = match &config.monitor {
        Some(m) => m.clone(),
        None => crate::monitor::RawMonitor::default()
            .validate(&mut |_, _| {})
            .context("the default monitor settings do not validate")?,
    };
    let settings: Settings = monitor.settings.clone();
    let reference =
        Reference::prepare(&profile, false, settings.seed).map_err(anyhow::Error::msg)?;
    let quantile = config.candidates.as_ref().map_or(0.99, |c| c.ood_quantile);
    let detector = OodDetector::fit(
        profile.embeddings.as_deref(),
        profile.descriptors.as_deref(),
        quantile,
    )
    .ok();
    let correctness = match (&profile.correctness, &profile.true_classes, &detector) {
        (Some(c), Some(t), Some(_)) => {
            Some(Correctness::new(c.clone(), t.clone()).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let session = &mut loaded.sessions[0];
    let per_image = spec.preprocess.tensor_len();
    let batch = config.inference.offline_batch(spec.max_batch);

    let mut traffic: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (name, dir) in &options.traffic {
        let files = read_folder(dir, &spec.labels)?;
        let mut rows = Vec::with_capacity(files.len());
        for chunk in files.chunks(batch) {
            let mut tensor = vec![0f32; chunk.len() * per_image];
            let mut described = Vec::with_capacity(chunk.len());
            for (slot, (file, _)) in chunk.iter().enumerate() {
                let bytes = std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let decoded = preprocess::decode(&bytes, None, &config.limits)
                    .with_context(|| format!("{}", file.display()))?;
                preprocess::to_tensor(
                    &decoded.image,
                    &spec.preprocess,
                    &mut tensor[slot * per_image..(slot + 1) * per_image],
                );
                described.push(describe(&decoded.image));
            }
            let outputs = model::run_batch(session, &spec, &tensor, chunk.len())?;
            for ((o, d), (_, truth)) in outputs.into_iter().zip(&described).zip(chunk) {
                let s = summarize(&o.probabilities);
                let stats = d.stats.values();
                let correct = match (&detector, &correctness) {
                    (Some(det), Some(c)) => {
                        let proximity = det.proximity(
                            o.embedding.as_deref(),
                            Some(&d.descriptor[..]),
                            NEIGHBORS,
                            None,
                        );
                        c.probability(&Inputs {
                            probabilities: &o.probabilities,
                            proximity: &proximity,
                            stats: Some([stats[0], stats[1]]),
                        })
                        .map_or(f32::NAN, |p| p as f32)
                    }
                    _ => f32::NAN,
                };
                rows.push(Row {
                    class: s.class,
                    confidence: s.confidence,
                    entropy: s.entropy,
                    inputs: stats,
                    embedding: o.embedding,
                    probabilities: o.probabilities,
                    correct,
                    truth: *truth,
                });
            }
        }
        order.push(name.clone());
        traffic.insert(name.clone(), rows);
    }
    for (name, parts) in &options.mixes {
        for (part, _) in parts {
            if !traffic.contains_key(part) {
                bail!("mixture {name}: no traffic named {part}");
            }
        }
        order.push(name.clone());
    }

    let k = spec.num_classes();
    let dim = spec.embedding_dim.unwrap_or(0);
    let mut rng = SplitMix64::new(options.seed);
    let mut results = Vec::new();
    for name in &order {
        let mut picks: Vec<Vec<&Row>> = Vec::with_capacity(options.windows);
        for _ in 0..options.windows {
            let window: Vec<&Row> = match options.mixes.iter().find(|(n, _)| n == name) {
                None => draw(&traffic[name], options.window, &mut rng),
                Some((_, parts)) => {
                    let total: f64 = parts.iter().map(|(_, w)| w).sum();
                    (0..options.window)
                        .map(|_| {
                            let mut u = rng.unit() * total;
                            let mut chosen = &parts[parts.len() - 1].0;
                            for (p, w) in parts {
                                if u < *w {
                                    chosen = p;
                                    break;
                                }
                                u -= w;
                            }
                            let rows = &traffic[chosen];
                            &rows[rng.below(rows.len() as u64) as usize]
                        })
                        .collect()
                }
            };
            picks.push(window);
        }
        results.push(evaluate_windows(
            name, &picks, &reference, &settings, k, dim,
        ));
    }
    print_table(&results);
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(results)
}

/// `n` rows without replacement when there are enough, else with.
fn draw<'a>(rows: &'a [Row], n: usize, rng: &mut SplitMix64) -> Vec<&'a Row> {
    if rows.len() >= n {
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        rng.shuffle(&mut idx);
        idx.into_iter().take(n).map(|i| &rows[i]).collect()
    } else {
        (0..n)
            .map(|_| &rows[rng.below(rows.len() as u64) as usize])
            .collect()
    }
}

fn window_data(rows: &[&Row], k: usize, dim: usize) -> WindowData {
    let mut d = WindowData {
        classes: k,
        embedding_dim: dim,
        ..WindowData::default()
    };
    let all_embedded = dim > 0 && rows.iter().all(|r| r.embedding.is_some());
    for (i, r) in rows.iter().enumerate() {
        d.len += 1;
        d.ts_us.push(i as i64);
        d.class.push(r.class as u32);
        d.confidence.push(r.confidence);
        d.entropy.push(r.entropy);
        d.probabilities.extend_from_slice(&r.probabilities);
        d.inputs.extend_from_slice(&r.inputs);
        if all_embedded && let Some(e) = &r.embedding {
            d.embeddings.extend_from_slice(e);
        }
        d.set_size.push(f32::NAN);
        d.correct.push(r.correct);
    }
    d
}

fn evaluate_windows(
    name: &str,
    windows: &[Vec<&Row>],
    reference: &Reference,
    settings: &Settings,
    k: usize,
    dim: usize,
) -> TrafficResult {
    let mut signed: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut truths = Vec::new();
    let mut excess = Vec::new();
    let mut alerts = 0usize;
    let mut window_excess = Vec::new();
    let mut window_alert = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut l1s = Vec::new();
    for rows in windows {
        let data = window_data(rows, k, dim);
        let (_, e) = evaluate(reference, &data, settings);
        let truth =
            rows.iter().filter(|r| r.truth == Some(r.class)).count() as f64 / rows.len() as f64;
        truths.push(truth);
        if let Some(ac) = e.ac {
            excess.push(ac - truth);
            window_excess.push(ac - truth);
            window_alert.push(e.overconfidence == Some(Status::Alert));
        }
        let served = [("served", e.accuracy)];
        for (method, value) in e.methods().into_iter().chain(served) {
            if let Some(v) = value {
                signed
                    .entry(method.to_string())
                    .or_default()
                    .push(v - truth);
            }
        }
        alerts += usize::from(e.overconfidence == Some(Status::Alert));
        if let Some(mix) = &e.class_mix {
            let kind = match mix.shift {
                ShiftKind::InsufficientData => "insufficient_data",
                ShiftKind::None => "none",
                ShiftKind::ClassMix => "class_mix",
                ShiftKind::Inputs => "inputs",
            };
            *kinds.entry(kind.to_string()).or_default() += 1;
            if rows.iter().all(|r| r.truth.is_some()) {
                let mut mix_true = vec![0f64; k];
                for r in rows {
                    mix_true[r.truth.unwrap_or(0)] += 1.0 / rows.len() as f64;
                }
                l1s.push(
                    mix_true
                        .iter()
                        .zip(&mix.estimated)
                        .map(|(a, b)| (a - b).abs())
                        .sum::<f64>(),
                );
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let errors = signed
        .iter()
        .map(|(m, v)| {
            let abs: Vec<f64> = v.iter().map(|x| x.abs()).collect();
            (
                m.clone(),
                (mean(&abs), abs.iter().copied().fold(0.0, f64::max)),
            )
        })
        .collect();
    TrafficResult {
        name: name.to_string(),
        windows: windows.len(),
        true_accuracy: mean(&truths),
        confidence_excess: mean(&excess),
        errors,
        signed,
        overconfidence_alert_share: alerts as f64 / windows.len().max(1) as f64,
        window_confidence_excess: window_excess,
        window_overconfidence_alert: window_alert,
        shift_kinds: kinds,
        bbse_l1: (!l1s.is_empty()).then(|| (mean(&l1s), l1s.iter().copied().fold(0.0, f64::max))),
    }
}

/// Per method: (mean absolute error, worst absolute error).
pub type MethodErrors = BTreeMap<String, (f64, f64)>;

/// Summary rows: each group's windows together.
pub fn group_summaries(results: &[TrafficResult]) -> Vec<(String, MethodErrors)> {
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in results {
        let Some((group, _)) = r.name.split_once('/') else {
            continue;
        };
        for (m, v) in &r.signed {
            groups
                .entry(group.to_string())
                .or_default()
                .entry(m.clone())
                .or_default()
                .extend(v.iter().map(|x| x.abs()));
        }
    }
    groups
        .into_iter()
        .map(|(g, methods)| {
            let stats = methods
                .into_iter()
                .map(|(m, abs)| {
                    let mean = abs.iter().sum::<f64>() / abs.len().max(1) as f64;
                    (m, (mean, abs.iter().copied().fold(0.0, f64::max)))
                })
                .collect();
            (g, stats)
        })
        .collect()
}

fn print_table(results: &[TrafficResult]) {
    let mut header = String::from("| traffic | true accuracy | confidence − accuracy |");
    let mut rule = String::from("|---|---:|---:|");
    for m in METHODS {
        header.push_str(&format!(" {m} |"));
        rule.push_str("---:|");
    }
    header.push_str(" overconfidence alerts | shift kind | BBSE L1 |");
    rule.push_str("---:|---|---:|");
    println!("Mean absolute error (worst) of each estimate against the true accuracy:\n");
    println!("{header}\n{rule}");
    for r in results {
        let mut line = format!(
            "| {} | {:.3} | {:+.3} |",
            r.name, r.true_accuracy, r.confidence_excess
        );
        for m in METHODS {
            match r.errors.get(m) {
                Some((mae, worst)) => line.push_str(&format!(" {mae:.3} ({worst:.2}) |")),
                None => line.push_str(" – |"),
            }
        }
        let kind = r
            .shift_kinds
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, n)| format!("{k} {n}/{}", r.windows))
            .unwrap_or_else(|| "–".into());
        let l1 = r
            .bbse_l1
            .map_or("–".into(), |(m, w)| format!("{m:.3} ({w:.2})"));
        line.push_str(&format!(
            " {:.0}% | {kind} | {l1} |",
            100.0 * r.overconfidence_alert_share
        ));
        println!("{line}");
    }
    let summaries = group_summaries(results);
    if !summaries.is_empty() {
        println!("\nEvery window of a group together:\n");
        let mut header = String::from("| group |");
        let mut rule = String::from("|---|");
        for m in METHODS {
            header.push_str(&format!(" {m} |"));
            rule.push_str("---:|");
        }
        println!("{header}\n{rule}");
        for (g, stats) in summaries {
            let mut line = format!("| {g} |");
            for m in METHODS {
                match stats.get(m) {
                    Some((mae, worst)) => line.push_str(&format!(" {mae:.3} ({worst:.2}) |")),
                    None => line.push_str(" – |"),
                }
            }
            println!("{line}");
        }
    }
}
