//! Per-image cost of serving one image in process (decode + preprocess + inference) against
//! bare ONNX Runtime on the same pre-made tensor, on the bundled digits model, one intra-op
//! thread. Batch 1 and batch 32 (what dynamic batching reaches under load).
//!
//! `cargo bench --bench pipeline` (or `make bench`). After criterion's own report the bench
//! prints a per-image table and the ratio pipeline / bare ONNX Runtime, both computed from the
//! estimates this run wrote (`<target>/criterion/<group>/<batch>/new/estimates.json`); a
//! benchmark that did not run this time (filtered out, `--test`) is left out, never read stale.
//!
//! Groups:
//! - `bare_ort`: `Session::run` on a pre-made [n, 1, 8, 8] tensor, reading the probabilities;
//! - `run_batch`: the same through `shiftwatch::model::run_batch` (the serving wrapper);
//! - `decode_preprocess`: PNG bytes → decoded image → model tensor;
//! - `pipeline`: decode + preprocess + `run_batch`, as a request's work minus HTTP and queueing.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput};
use image::ImageFormat;
use ort::session::Session;
use ort::value::TensorRef;
use shiftwatch::config::Config;
use shiftwatch::model::{LoadedModel, ModelSpec, run_batch};
use shiftwatch::preprocess::DecodeLimits;
use shiftwatch::preprocess::{decode, to_tensor};

/// Batch sizes measured: one request alone, and a full batch of the default `max_batch`.
const BATCHES: [usize; 2] = [1, 32];
/// Distinct sample images cycled through (so decoding does not see one file only).
const IMAGES: usize = 32;

/// Sample PNGs from the bundled traffic (32x32 grayscale, resized to the model's 8x8).
fn sample_images(root: &Path) -> Vec<Vec<u8>> {
    let dir = root.join("data/traffic/normal");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= IMAGES,
        "{} holds {} PNGs; the bench needs {IMAGES}",
        dir.display(),
        paths.len()
    );
    paths
        .iter()
        .take(IMAGES)
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())))
        .collect()
}

/// The digits model on one session with one intra-op and one inter-op thread.
fn bench_config(root: &Path) -> Config {
    let model = root.join("models/digits.onnx");
    let text = format!(
        "[model]\nname = \"digits\"\npath = {}\n\
         [inference]\nsessions = 1\nintra_threads = 1\ninter_threads = 1\nmax_batch = {}\n",
        toml::Value::String(model.display().to_string()),
        BATCHES[BATCHES.len() - 1]
    );
    // No environment overrides: the bench measures one fixed configuration.
    shiftwatch::config::load_str(&text, Path::new("benches/pipeline.rs"), std::iter::empty())
        .unwrap_or_else(|e| panic!("bench config: {e}"))
}

/// Decodes one PNG and writes its model tensor into `out`, as the classify handler does.
fn preprocess_one(bytes: &[u8], spec: &ModelSpec, limits: &DecodeLimits, out: &mut [f32]) {
    let decoded = decode(bytes, Some(ImageFormat::Png), limits).expect("a bundled PNG decodes");
    to_tensor(&decoded.image, &spec.preprocess, out);
}

/// `Session::run` on a ready tensor and a read of the probabilities: what ONNX Runtime costs.
fn bare_run(session: &mut Session, spec: &ModelSpec, input: &[f32], n: usize) -> f32 {
    let mut shape = vec![n as i64];
    shape.extend(spec.preprocess.image_shape());
    let tensor = TensorRef::from_array_view((shape, input)).expect("a valid input tensor");
    let outputs = session
        .run(ort::inputs![spec.input_name.as_str() => tensor])
        .expect("the model runs");
    let (_, probabilities) = outputs[spec.probabilities_output.as_str()]
        .try_extract_tensor::<f32>()
        .expect("float32 probabilities");
    probabilities[probabilities.len() - 1]
}

fn benches(c: &mut Criterion, model: &mut LoadedModel, config: &Config, images: &[Vec<u8>]) {
    let spec = model.spec.clone();
    let session = &mut model.sessions[0];
    let limits = config.limits;
    let per_image = spec.preprocess.tensor_len();

    // The pre-made tensors of the same images, made once by the same code.
    let mut tensors = vec![0f32; IMAGES * per_image];
    for (bytes, out) in images.iter().zip(tensors.chunks_mut(per_image)) {
        preprocess_one(bytes, &spec, &limits, out);
    }
    // Batch n starting at image `start` of the pre-made tensors (n divides IMAGES).
    let slice = |start: usize, n: usize| &tensors[start * per_image..(start + n) * per_image];

    let mut g = c.benchmark_group("bare_ort");
    for n in BATCHES {
        g.throughput(Throughput::Elements(n as u64));
        let mut start = 0;
        g.bench_function(format!("batch{n}"), |b| {
            b.iter(|| {
                let input = slice(start, n);
                start = (start + n) % IMAGES;
                black_box(bare_run(session, &spec, black_box(input), n))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("run_batch");
    for n in BATCHES {
        g.throughput(Throughput::Elements(n as u64));
        let mut start = 0;
        g.bench_function(format!("batch{n}"), |b| {
            b.iter(|| {
                let input = slice(start, n);
                start = (start + n) % IMAGES;
                black_box(run_batch(session, &spec, black_box(input), n).expect("the model runs"))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decode_preprocess");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    let mut out = vec![0f32; per_image];
    g.bench_function("batch1", |b| {
        b.iter(|| {
            let bytes = &images[i];
            i = (i + 1) % IMAGES;
            preprocess_one(black_box(bytes), &spec, &limits, &mut out);
            black_box(&out);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    for n in BATCHES {
        g.throughput(Throughput::Elements(n as u64));
        let mut start = 0;
        g.bench_function(format!("batch{n}"), |b| {
            b.iter(|| {
                // As the server does: a fresh tensor buffer per request, one run per batch.
                let mut input = vec![0f32; n * per_image];
                for (k, out) in input.chunks_mut(per_image).enumerate() {
                    preprocess_one(black_box(&images[start + k]), &spec, &limits, out);
                }
                start = (start + n) % IMAGES;
                black_box(run_batch(session, &spec, &input, n).expect("the model runs"))
            })
        });
    }
    g.finish();
}

/// Where criterion writes its results: `$CRITERION_HOME`, else `criterion/` in the target
/// folder this executable was built into (`<target>/<profile>/deps/pipeline-<hash>`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

/// Seconds per iteration of one benchmark, as criterion reports it (the slope of the linear
/// regression when it sampled linearly, else the mean), if this run wrote it.
fn estimate(home: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = home.join(id).join("new/estimates.json");
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if written < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let point = |key: &str| json.get(key)?.get("point_estimate")?.as_f64();
    Some(point("slope").or_else(|| point("mean"))? * 1e-9)
}

fn print_summary(home: &Path, since: SystemTime) {
    // (benchmark, seconds per image) for each benchmark this run measured, in report order.
    let measured: Vec<(String, f64)> = ["bare_ort", "run_batch", "decode_preprocess", "pipeline"]
        .iter()
        .flat_map(|g| BATCHES.iter().map(move |&n| (format!("{g}/batch{n}"), n)))
        .filter_map(|(id, n)| {
            let seconds = estimate(home, &id, since)?;
            Some((id, seconds / n as f64))
        })
        .collect();
    if measured.is_empty() {
        println!("\nno benchmark was measured in this run (test mode or a filter): no ratio");
        return;
    }
    println!("\nper image, this run ({}):", home.display());
    for (id, seconds) in &measured {
        println!("  {id:<26} {:>9.3} µs", seconds * 1e6);
    }
    let get = |id: String| measured.iter().find(|(m, _)| *m == id).map(|m| m.1);
    for n in BATCHES {
        match (
            get(format!("pipeline/batch{n}")),
            get(format!("bare_ort/batch{n}")),
        ) {
            (Some(p), Some(b)) => println!(
                "ratio batch {n}: pipeline / bare ONNX Runtime = {:.2} ({:.3} µs / {:.3} µs per image)",
                p / b,
                p * 1e6,
                b * 1e6
            ),
            _ => println!("ratio batch {n}: not measured in this run"),
        }
    }
}

fn main() {
    let since = SystemTime::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = bench_config(root);
    let images = sample_images(root);
    let mut model = config
        .load_model(config.first_model())
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", config.first_model().path.display()));

    let home = criterion_home();
    // Short by default so the whole bench runs in about a minute; the usual flags
    // (--measurement-time, --warm-up-time, --sample-size) still override these.
    let mut c = Criterion::default()
        .output_directory(&home)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c, &mut model, &config, &images);
    c.final_summary();
    print_summary(&home, since);
}
