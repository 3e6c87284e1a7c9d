//! The detection benchmark (`cargo bench --bench detection`; `make bench` runs it): a simulation
//! on the bundled traffic, no server. Every image of `data/traffic/*` goes once through the
//! bundled model (ONNX Runtime, as served); the streams are then drawn from those predictions
//! with replacement (a bootstrap: the folders hold 163 to 540 images) with a fixed seed.
//!
//! 1. False alarms per 10^6 predictions of unshifted traffic (`normal`, the test split),
//!    evaluated every 50 predictions: before — the window tests (window 1000, the shipped
//!    settings, hysteresis; an alarm is a family entering `alert`) — and after — the sequential
//!    e-detectors (an alarm is a family's evidence crossing its threshold).
//! 2. Detection delay: 1,000 normal predictions, then a shift (every bundled one, and 10% and 25%
//!    mixtures of the out-of-distribution set with normal traffic); the delay is the number of
//!    shifted predictions sent when an evaluation (every 50) first finds any family in alert.
//!    Mean, 90th percentile and worst over the trials; a trial that has not alerted after 3,000
//!    counts 3,000 and lowers the detected share.
//! 3. Conformal prediction sets of both bundled models, calibrated on their labeled reference
//!    at 0.9: coverage on the held-out test split (`normal`) and on the labeled shifts (with the
//!    served draws, from the request ids, and averaged over the draw: each true class's
//!    inclusion probability), mean set size on every traffic folder.
//!
//! Prints Markdown tables (the README's) and writes runs/detection_bench.json. Without `--bench`
//! (`cargo test --benches`) it is a smoke run: few predictions, no delay trials of the window
//! tests, nothing written.

use std::collections::BTreeMap;
use std::path::Path;

#[path = "support/traffic.rs"]
mod traffic;
use traffic::{FOLDERS, Sample, samples};

use shiftwatch::config;
use shiftwatch::monitor::evaluate::{Hysteresis, Settings, Status, evaluate};
use shiftwatch::monitor::reference::Reference;
use shiftwatch::monitor::sequential::{Sequential, SequentialSettings};
use shiftwatch::monitor::window::{Observation, Window};
use shiftwatch::prediction::summarize;
use shiftwatch::stats::conformal::Regularization;
use shiftwatch::stats::random::SplitMix64;

const EVERY: usize = 50;
const WARM_UP: usize = 1000;
const MAX_DELAY: usize = 3000;

fn reference(
    root: &Path,
    path: &str,
    settings: &Settings,
    reg: Regularization,
    temperature: bool,
) -> Reference {
    let profile = traffic::profile(root, path);
    let mut r = Reference::prepare(&profile, false, settings.seed).expect("prepared");
    r.calibrate_prediction_sets(&profile, 0.9, reg, temperature, settings.seed)
        .expect("a labeled reference");
    r
}

/// Where the simulated stream draws from.
#[derive(Clone, Copy)]
enum Stream<'a> {
    Pool(&'a [Sample]),
    /// `share` of draws from the second pool, the rest from the first.
    Mixture(&'a [Sample], &'a [Sample], f64),
}

impl Stream<'_> {
    fn draw(&self, rng: &mut SplitMix64) -> &Sample {
        let pick = |pool: &[Sample], rng: &mut SplitMix64| -> usize {
            rng.below(pool.len() as u64) as usize
        };
        match *self {
            Stream::Pool(p) => &p[pick(p, rng)],
            Stream::Mixture(a, b, share) => {
                if rng.unit() < share {
                    &b[pick(b, rng)]
                } else {
                    &a[pick(a, rng)]
                }
            }
        }
    }
}

/// The stream, as the monitor sees it (set sizes drawn per simulated request id).
struct Feed<'a> {
    reference: &'a Reference,
    rng: SplitMix64,
    sent: u64,
    dim: usize,
}

impl Feed<'_> {
    /// The next `n` predictions of `stream` as window rows.
    fn rows(&mut self, stream: Stream<'_>, n: usize, into: &mut Window) {
        for _ in 0..n {
            let s = stream.draw(&mut self.rng);
            let sum = summarize(&s.probabilities);
            self.sent += 1;
            let set_size = self.reference.conformal.as_ref().map_or(f32::NAN, |c| {
                c.set(&s.probabilities, &format!("sim-{}", self.sent)).len() as f32
            });
            into.push(&Observation {
                ts_us: self.sent as i64,
                class: sum.class,
                confidence: sum.confidence,
                entropy: sum.entropy,
                probabilities: &s.probabilities,
                inputs: s.inputs,
                embedding: (self.dim > 0).then_some(&s.embedding[..]),
                set_size,
                correct: f32::NAN,
            });
        }
    }
}

/// What is being benchmarked: the window tests or the sequential detectors.
enum Detector<'a> {
    Window {
        /// The reference without prediction sets: the window tests as they were.
        reference: &'a Reference,
        settings: &'a Settings,
        clear_after: u32,
        hysteresis: Vec<Hysteresis>,
        window: Window,
    },
    Sequential {
        detectors: Sequential,
        /// A small ring that carries each block of EVERY rows to the detectors.
        block: Window,
    },
}

impl Detector<'_> {
    /// Sends EVERY predictions, evaluates; returns the families that newly alert and whether
    /// any is in alert.
    fn step(&mut self, feed: &mut Feed<'_>, stream: Stream<'_>) -> (Vec<&'static str>, bool) {
        let reference = feed.reference;
        match self {
            Detector::Window {
                reference: before,
                settings,
                clear_after,
                hysteresis,
                window,
            } => {
                feed.rows(stream, EVERY, window);
                let (outcomes, _) = evaluate(before, &window.snapshot(i64::MIN), settings);
                let mut new = Vec::new();
                let mut any = false;
                for o in outcomes {
                    let h = &mut hysteresis[o.kind.index()];
                    let before = h.status;
                    let now = h.update(o.raw, *clear_after);
                    if now == Status::Alert && before != Status::Alert {
                        new.push(o.kind.as_str());
                    }
                    any |= now == Status::Alert;
                }
                (new, any)
            }
            Detector::Sequential { detectors, block } => {
                feed.rows(stream, EVERY, block);
                let fresh = block.since(detectors.seen());
                detectors.feed(&fresh.data, reference, fresh.pushed, fresh.skipped);
                let (alarms, reports) = detectors.check(feed.sent as i64);
                (
                    alarms.iter().map(|a| a.kind.as_str()).collect(),
                    reports.iter().any(|r| r.status == Status::Alert),
                )
            }
        }
    }
}

struct Bench<'a> {
    reference: &'a Reference,
    /// The same without prediction sets (the window tests before this change).
    reference_before: &'a Reference,
    settings: &'a Settings,
    sequential: &'a SequentialSettings,
    clear_after: u32,
    window: usize,
    classes: usize,
    dim: usize,
}

impl Bench<'_> {
    fn detector(&self, sequential: bool) -> Detector<'_> {
        if sequential {
            Detector::Sequential {
                detectors: Sequential::new(self.reference, self.sequential),
                block: Window::new(EVERY, self.classes, self.dim),
            }
        } else {
            Detector::Window {
                reference: self.reference_before,
                settings: self.settings,
                clear_after: self.clear_after,
                hysteresis: vec![Hysteresis::default(); 16],
                window: Window::new(self.window, self.classes, self.dim),
            }
        }
    }

    fn feed(&self, seed: u64) -> Feed<'_> {
        Feed {
            reference: self.reference,
            rng: SplitMix64::new(seed),
            sent: 0,
            dim: self.dim,
        }
    }

    /// Alarms (families entering alert) over `n` predictions of `normal`, by family.
    fn false_alarms(
        &self,
        sequential: bool,
        normal: &[Sample],
        n: usize,
        seed: u64,
    ) -> BTreeMap<&'static str, usize> {
        let mut d = self.detector(sequential);
        let mut feed = self.feed(seed);
        let mut alarms = BTreeMap::new();
        for _ in 0..n / EVERY {
            for family in d.step(&mut feed, Stream::Pool(normal)).0 {
                *alarms.entry(family).or_insert(0) += 1;
            }
        }
        alarms
    }

    /// Shifted predictions sent when the first alert is seen (None: not within MAX_DELAY), and
    /// whether an alarm came during the warm-up.
    fn delay(
        &self,
        sequential: bool,
        normal: &[Sample],
        shifted: Stream<'_>,
        seed: u64,
    ) -> (Option<usize>, bool, Vec<&'static str>) {
        let mut d = self.detector(sequential);
        let mut feed = self.feed(seed);
        let mut early = false;
        for _ in 0..WARM_UP / EVERY {
            early |= d.step(&mut feed, Stream::Pool(normal)).1;
        }
        for step in 1..=MAX_DELAY / EVERY {
            let (new, any) = d.step(&mut feed, shifted);
            if any {
                return (Some(step * EVERY), early, new);
            }
        }
        (None, early, Vec::new())
    }
}

#[derive(serde::Serialize)]
struct DelayRow {
    traffic: String,
    detector: &'static str,
    trials: usize,
    detected: f64,
    mean: f64,
    p90: f64,
    max: f64,
    warm_up_alarms: usize,
    /// How often each family was among the first to alert.
    first: BTreeMap<&'static str, usize>,
}

fn summarize_delays(
    traffic: &str,
    detector: &'static str,
    delays: &[(Option<usize>, bool, Vec<&'static str>)],
) -> DelayRow {
    let mut first = BTreeMap::new();
    for (_, _, families) in delays {
        for f in families {
            *first.entry(*f).or_insert(0) += 1;
        }
    }
    let mut d: Vec<f64> = delays
        .iter()
        .map(|(d, _, _)| d.unwrap_or(MAX_DELAY) as f64)
        .collect();
    d.sort_by(f64::total_cmp);
    let n = d.len();
    DelayRow {
        traffic: traffic.to_string(),
        detector,
        trials: n,
        detected: delays.iter().filter(|(d, _, _)| d.is_some()).count() as f64 / n as f64,
        mean: d.iter().sum::<f64>() / n as f64,
        // The nearest-rank 90th percentile.
        p90: d[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1],
        max: d[n - 1],
        warm_up_alarms: delays.iter().filter(|(_, e, _)| *e).count(),
        first,
    }
}

fn main() {
    let full =
        std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = config::load(&root.join("config/shiftwatch.toml"), std::env::vars()).expect("config");
    let monitor = cfg
        .monitor
        .as_ref()
        .expect("monitor enabled in the shipped config");
    let settings = monitor.settings.clone();
    let sequential = monitor.sequential.clone().unwrap_or_default();
    let reg = monitor.prediction_set_regularization;
    let env_usize = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (fa_after, fa_before, trials_after, trials_before) = if full {
        (
            env_usize("DETECTION_FA_AFTER", 2_000_000),
            env_usize("DETECTION_FA_BEFORE", 1_000_000),
            env_usize("DETECTION_TRIALS_AFTER", 200),
            env_usize("DETECTION_TRIALS_BEFORE", 30),
        )
    } else {
        // A smoke run (`cargo test --benches`): no delay trials of the slow window tests.
        (20_000, 2_000, 3, 0)
    };

    let temperature = monitor.prediction_set_temperature;
    let reference_default = reference(
        root,
        "models/digits.reference.json",
        &settings,
        reg,
        temperature,
    );
    let classes = reference_default.labels.len();
    let dim = reference_default.embeddings.as_ref().map_or(0, |(_, d)| *d);
    let pools: Vec<Vec<Sample>> = FOLDERS
        .iter()
        .map(|f| samples(root, "models/digits.onnx", f))
        .collect();
    let normal = &pools[0][..];
    let ood = &pools[5][..];
    let mut reference_before = reference_default.clone();
    reference_before.conformal = None;
    let bench = Bench {
        reference: &reference_default,
        reference_before: &reference_before,
        settings: &settings,
        sequential: &sequential,
        clear_after: monitor.clear_after,
        window: monitor.window,
        classes,
        dim,
    };

    // 1: false alarms.
    let started = std::time::Instant::now();
    let by_family_seq = bench.false_alarms(true, normal, fa_after, settings.seed);
    let fa_seq: usize = by_family_seq.values().sum();
    eprintln!(
        "sequential: {by_family_seq:?} in {fa_after} ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let by_family_win = if std::env::var("DETECTION_SKIP_BEFORE").is_ok() {
        BTreeMap::new()
    } else {
        bench.false_alarms(false, normal, fa_before, settings.seed + 1)
    };
    let fa_win: usize = by_family_win.values().sum();
    eprintln!(
        "window: {by_family_win:?} in {fa_before} ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let per_million = |alarms: usize, n: usize| alarms as f64 * 1e6 / n as f64;
    println!(
        "\nFalse alarms on unshifted traffic (bootstrap of the {} test-split predictions), evaluated every {EVERY}\n",
        normal.len()
    );
    println!("| detector | predictions | alarms | per 10^6 predictions |\n|---|---:|---:|---:|");
    println!(
        "| before: window tests (window {}, alpha {}) | {fa_before} | {fa_win} | {:.1} |",
        monitor.window,
        settings.alpha,
        per_million(fa_win, fa_before)
    );
    println!(
        "| after: sequential e-detectors (run length {:.0}) | {fa_after} | {fa_seq} | {:.1} |",
        sequential.run_length,
        per_million(fa_seq, fa_after)
    );
    let names = |m: &BTreeMap<&str, usize>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "\nAlarms by family: before {}; after {}",
        names(&by_family_win),
        names(&by_family_seq)
    );

    // 2: detection delays.
    let scenarios: Vec<(String, Stream<'_>)> = FOLDERS[1..]
        .iter()
        .enumerate()
        .map(|(i, f)| (f.to_string(), Stream::Pool(&pools[i + 1])))
        .chain([
            (
                "ood 10% mixture".to_string(),
                Stream::Mixture(normal, ood, 0.1),
            ),
            (
                "ood 25% mixture".to_string(),
                Stream::Mixture(normal, ood, 0.25),
            ),
        ])
        .collect();
    let mut rows = Vec::new();
    let scenarios = if std::env::var("DETECTION_SKIP_DELAYS").is_ok() {
        Vec::new()
    } else {
        scenarios
    };
    for (si, (name, stream)) in scenarios.iter().enumerate() {
        for (seq, trials, label) in [
            (false, trials_before.max(1), "before"),
            (true, trials_after.max(1), "after"),
        ] {
            if !seq && trials_before == 0 {
                rows.push(DelayRow {
                    traffic: name.clone(),
                    detector: label,
                    trials: 0,
                    detected: f64::NAN,
                    mean: f64::NAN,
                    p90: f64::NAN,
                    max: f64::NAN,
                    warm_up_alarms: 0,
                    first: BTreeMap::new(),
                });
                continue;
            }
            let delays: Vec<(Option<usize>, bool, Vec<&'static str>)> = (0..trials)
                .map(|t| {
                    bench.delay(
                        seq,
                        normal,
                        *stream,
                        settings.seed ^ ((si as u64) << 32) ^ ((t as u64 + 1) * 7919),
                    )
                })
                .collect();
            let row = summarize_delays(name, label, &delays);
            eprintln!(
                "{name} {label}: mean {:.0}, first: {:?}",
                row.mean, row.first
            );
            rows.push(row);
        }
    }
    println!(
        "\nDetection delay: shifted predictions until an evaluation (every {EVERY}) is in alert, after {WARM_UP} normal ones\n"
    );
    println!(
        "| traffic | before: mean | p90 | max | detected | after: mean | p90 | max | detected |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for pair in rows.chunks(2) {
        let (b, a) = (&pair[0], &pair[1]);
        let cells = |r: &DelayRow| {
            if r.trials == 0 {
                "— | — | — | —".to_string()
            } else {
                format!(
                    "{:.0} | {:.0} | {:.0} | {:.0}%",
                    r.mean,
                    r.p90,
                    r.max,
                    r.detected * 100.0
                )
            }
        };
        println!("| {} | {} | {} |", b.traffic, cells(b), cells(a));
    }
    println!(
        "\n({trials_before} trials before, {trials_after} after; alarms during the warm-ups: before {}, after {})",
        rows.iter()
            .filter(|r| r.detector == "before")
            .map(|r| r.warm_up_alarms)
            .sum::<usize>(),
        rows.iter()
            .filter(|r| r.detector == "after")
            .map(|r| r.warm_up_alarms)
            .sum::<usize>()
    );

    // 3: prediction sets.
    println!(
        "\nConformal prediction sets (randomized RAPS, penalty {} beyond rank {}, target coverage 0.9, calibrated on the labeled reference)\n",
        reg.penalty, reg.free_ranks
    );
    println!(
        "| model | traffic | images | coverage | coverage over the draws | mean set size | empty sets |\n|---|---|---:|---:|---:|---:|---:|"
    );
    let mut sets = Vec::new();
    let mut temperatures = Vec::new();
    for (model, path, profile) in [
        (
            "digits",
            "models/digits.onnx",
            "models/digits.reference.json",
        ),
        (
            "digits-overconfident",
            "models/digits-overconfident.onnx",
            "models/digits-overconfident.reference.json",
        ),
    ] {
        let r = reference(root, profile, &settings, reg, temperature);
        let conformal = r.conformal.as_ref().expect("calibrated");
        temperatures.push(format!("{model} {:.2}", conformal.temperature));
        for (fi, folder) in FOLDERS.iter().enumerate() {
            let pool = if model == "digits" {
                pools[fi].clone()
            } else {
                samples(root, path, folder)
            };
            let (mut covered, mut labeled, mut size, mut empty) = (0usize, 0usize, 0usize, 0usize);
            let mut inclusion = 0.0;
            for (i, s) in pool.iter().enumerate() {
                let set = conformal.set(&s.probabilities, &format!("{folder}-{i:04}"));
                size += set.len();
                empty += usize::from(set.is_empty());
                if let Some(t) = s.truth {
                    labeled += 1;
                    covered += usize::from(set.contains(&t));
                    inclusion += conformal.inclusion(&s.probabilities, t);
                }
            }
            let n = pool.len() as f64;
            let coverage = (labeled > 0).then(|| covered as f64 / labeled as f64);
            let expected = (labeled > 0).then(|| inclusion / labeled as f64);
            let show = |v: Option<f64>| v.map_or("—".to_string(), |c| format!("{c:.3}"));
            println!(
                "| {model} | {folder} | {} | {} | {} | {:.2} | {:.0}% |",
                pool.len(),
                show(coverage),
                show(expected),
                size as f64 / n,
                empty as f64 * 100.0 / n
            );
            sets.push(serde_json::json!({
                "model": model, "traffic": folder, "images": pool.len(), "coverage": coverage,
                "temperature": conformal.temperature,
                "coverage_over_draws": expected,
                "mean_size": size as f64 / n, "empty": empty as f64 / n,
            }));
        }
    }
    println!(
        "\nThe set scores' fitted temperatures: {}",
        temperatures.join(", ")
    );
    let json = serde_json::json!({
        "every": EVERY, "warm_up": WARM_UP,
        "false_alarms": {"before": {"predictions": fa_before, "alarms": fa_win, "by_family": by_family_win},
                          "after": {"predictions": fa_after, "alarms": fa_seq, "by_family": by_family_seq}},
        "delays": rows, "prediction_sets": sets,
    });
    if full {
        let _ = std::fs::create_dir_all(root.join("runs"));
        let _ = std::fs::write(root.join("runs/detection_bench.json"), json.to_string());
    }
}
