//! The monitor's benchmarks (`cargo bench --bench monitor`):
//!
//! 1. Shift detection in the style of Rabanser et al. (2019, table 1): for each bundled shift and
//!    window size (50, 100, 200, 500, 1000), the share of 20+ random windows in which any test
//!    family alerts (default settings from config/shiftwatch.toml), and the false-alarm share on
//!    unshifted windows. Windows are drawn with replacement from the bundled traffic folder.
//! 2. Label-free accuracy estimation: mean absolute error of AC, DoC and ATC against the true
//!    accuracy of the same windows; and the overconfidence gap of the default model against the
//!    deliberately overconfident one on the same traffic.
//! 3. Cost: evaluating every test on a 10,000-prediction window, and the monitor's share of a
//!    request (flags + copy into the window).
//!
//! Prints Markdown tables and writes runs/monitor_bench.json.

use std::path::Path;
use std::time::Instant;

#[path = "support/traffic.rs"]
mod traffic;
use traffic::{FOLDERS, Sample, samples};

use shiftwatch::config;
use shiftwatch::monitor::evaluate::{Settings, Status, TestKind, evaluate};
use shiftwatch::monitor::reference::Reference;
use shiftwatch::monitor::window::{Observation, Window};
use shiftwatch::prediction::summarize;
use shiftwatch::stats::random::SplitMix64;

fn reference(root: &Path, path: &str, settings: &Settings) -> Reference {
    Reference::prepare(&traffic::profile(root, path), false, settings.seed).expect("prepared")
}

/// A window of `size` draws (with replacement); returns it and the true accuracy when labeled.
fn window(
    pool: &[Sample],
    size: usize,
    rng: &mut SplitMix64,
    classes: usize,
    dim: usize,
) -> (Window, Option<f64>) {
    let mut w = Window::new(size, classes, dim);
    let mut correct = 0usize;
    let mut labeled = 0usize;
    for i in 0..size {
        let s = &pool[rng.below(pool.len() as u64) as usize];
        let sum = summarize(&s.probabilities);
        if let Some(t) = s.truth {
            labeled += 1;
            correct += usize::from(t == sum.class);
        }
        w.push(&Observation {
            ts_us: i as i64,
            class: sum.class,
            confidence: sum.confidence,
            entropy: sum.entropy,
            probabilities: &s.probabilities,
            inputs: s.inputs,
            embedding: (dim > 0).then_some(&s.embedding[..]),
            set_size: f32::NAN,
            correct: f32::NAN,
        });
    }
    (w, (labeled == size).then(|| correct as f64 / size as f64))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Environment overrides (SHIFTWATCH__MONITOR__...) let the benchmark compare settings.
    let cfg = config::load(&root.join("config/shiftwatch.toml"), std::env::vars()).expect("config");
    let settings = cfg
        .monitor
        .as_ref()
        .expect("monitor enabled in the shipped config")
        .settings
        .clone();
    let (sizes, trials): (Vec<usize>, usize) = if full {
        (vec![50, 100, 200, 500, 1000], 100)
    } else {
        (vec![100], 2)
    };

    let reference_default = reference(root, "models/digits.reference.json", &settings);
    let classes = reference_default.labels.len();
    let dim = reference_default.embeddings.as_ref().map_or(0, |(_, d)| *d);
    let pools: Vec<Vec<Sample>> = FOLDERS
        .iter()
        .map(|s| samples(root, "models/digits.onnx", s))
        .collect();

    // 1 + 2: detection and estimation.
    let mut rng = SplitMix64::new(settings.seed);
    let mut detection = Vec::new();
    let mut family_hits = vec![vec![0usize; TestKind::ALL.len()]; FOLDERS.len()];
    let mut abs_err = vec![[0f64; 3]; FOLDERS.len()];
    let mut est_count = vec![0usize; FOLDERS.len()];
    let mut gap_default = vec![0f64; FOLDERS.len()];
    for (si, pool) in pools.iter().enumerate() {
        let mut row = Vec::new();
        for &size in &sizes {
            let mut hits = 0;
            for _ in 0..trials {
                let (w, truth) = window(pool, size, &mut rng, classes, dim);
                let (outcomes, est) =
                    evaluate(&reference_default, &w.snapshot(i64::MIN), &settings);
                let alerted: Vec<TestKind> = outcomes
                    .iter()
                    .filter(|o| o.raw == Status::Alert)
                    .map(|o| o.kind)
                    .collect();
                if !alerted.is_empty() {
                    hits += 1;
                }
                if size == 500 {
                    for k in &alerted {
                        family_hits[si]
                            [TestKind::ALL.iter().position(|x| x == k).expect("listed")] += 1;
                    }
                    gap_default[si] += est.overconfidence_gap.unwrap_or(f64::NAN) / trials as f64;
                    if let Some(acc) = truth {
                        for (m, v) in [est.ac, est.doc, est.atc].iter().enumerate() {
                            abs_err[si][m] += (v.expect("estimate") - acc).abs();
                        }
                        est_count[si] += 1;
                    }
                }
            }
            row.push(hits as f64 / trials as f64);
        }
        detection.push(row);
    }

    println!(
        "\nShift detection: share of {trials} random windows with an alert (false alarms on `normal`)\n"
    );
    print!("| traffic |");
    for s in &sizes {
        print!(" {s} |");
    }
    println!("\n|---|{}", "---:|".repeat(sizes.len()));
    for (si, name) in FOLDERS.iter().enumerate() {
        print!("| {name} |");
        for r in &detection[si] {
            print!(" {:.0}% |", r * 100.0);
        }
        println!();
    }
    if sizes.contains(&500) {
        println!("\nWhich families alert at 500 samples (share of windows)\n");
        print!("| traffic |");
        for k in TestKind::ALL {
            print!(" {} |", k.as_str());
        }
        println!("\n|---|{}", "---:|".repeat(TestKind::ALL.len()));
        for (si, name) in FOLDERS.iter().enumerate() {
            print!("| {name} |");
            for h in &family_hits[si] {
                print!(" {:.0}% |", *h as f64 * 100.0 / trials as f64);
            }
            println!();
        }
        println!("\nLabel-free accuracy estimates: mean absolute error over windows of 500\n");
        println!("| traffic | AC | DoC | ATC |\n|---|---:|---:|---:|");
        let mut total = [0f64; 3];
        let mut n_total = 0;
        for (si, name) in FOLDERS.iter().enumerate() {
            if est_count[si] == 0 {
                continue;
            }
            let c = est_count[si] as f64;
            println!(
                "| {name} | {:.3} | {:.3} | {:.3} |",
                abs_err[si][0] / c,
                abs_err[si][1] / c,
                abs_err[si][2] / c
            );
            for m in 0..3 {
                total[m] += abs_err[si][m];
            }
            n_total += est_count[si];
        }
        let n = n_total as f64;
        println!(
            "| all | {:.3} | {:.3} | {:.3} |",
            total[0] / n,
            total[1] / n,
            total[2] / n
        );

        // The overconfident model on the same traffic.
        let reference_over = reference(
            root,
            "models/digits-overconfident.reference.json",
            &settings,
        );
        let mut gap_over = vec![0f64; FOLDERS.len()];
        for (si, name) in FOLDERS.iter().enumerate() {
            let pool = samples(root, "models/digits-overconfident.onnx", name);
            for _ in 0..trials {
                let (w, _) = window(&pool, 500, &mut rng, classes, dim);
                let (_, est) = evaluate(&reference_over, &w.snapshot(i64::MIN), &settings);
                gap_over[si] += est.overconfidence_gap.unwrap_or(f64::NAN) / trials as f64;
            }
        }
        println!("\nOverconfidence gap (AC − ATC), mean over windows of 500\n");
        println!("| traffic | default model | overconfident model |\n|---|---:|---:|");
        for (si, name) in FOLDERS.iter().enumerate() {
            println!(
                "| {name} | {:+.3} | {:+.3} |",
                gap_default[si], gap_over[si]
            );
        }
        let json = serde_json::json!({
            "sizes": sizes, "trials": trials, "shifts": FOLDERS, "detection": detection,
            "mae": {"ac": total[0] / n, "doc": total[1] / n, "atc": total[2] / n},
            "gap_default": gap_default, "gap_overconfident": gap_over,
        });
        let _ = std::fs::create_dir_all(root.join("runs"));
        let _ = std::fs::write(root.join("runs/monitor_bench.json"), json.to_string());
    }

    // 3: cost.
    let mut rng = SplitMix64::new(7);
    let (big, _) = window(&pools[0], 10_000, &mut rng, classes, dim);
    let data = big.snapshot(i64::MIN);
    let runs = if full { 20 } else { 1 };
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        let _ = evaluate(&reference_default, &data, &settings);
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "\nEvaluating every test on a 10,000-prediction window: {best:.2} ms (best of {runs}; target 20 ms)"
    );
    let n = if full { 200_000 } else { 1_000 };
    // As on the request path: the window behind a mutex.
    let w = std::sync::Mutex::new(Window::new(1000, classes, dim));
    let s = &pools[0][0];
    let sum = summarize(&s.probabilities);
    let t = Instant::now();
    let mut flags = 0usize;
    for i in 0..n {
        flags += reference_default
            .flags(sum.class, sum.confidence, Some(&s.embedding))
            .len();
        w.lock().expect("not poisoned").push(&Observation {
            ts_us: i as i64,
            class: sum.class,
            confidence: sum.confidence,
            entropy: sum.entropy,
            probabilities: &s.probabilities,
            inputs: s.inputs,
            embedding: Some(&s.embedding),
            set_size: f32::NAN,
            correct: f32::NAN,
        });
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "Monitor on the request path (flags + window copy): {per:.0} ns per prediction (target 2000 ns) [{flags}]"
    );
}
