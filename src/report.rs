//! `shiftwatch report`: a period of the Hive-layout log, from a folder or a bucket (the same
//! object-store code as log shipping), evaluated with the monitor's own code (a `Monitor` per
//! period and per time bucket, fed the logged predictions and the delayed labels joined to them),
//! written as one self-contained HTML file (inline SVG, no script, no network) and a JSON summary
//! whose `tests`, `estimates` and `labeled` have `/v1/monitor`'s shapes.

mod html;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use url::Url;

use crate::metrics::Metrics;
use crate::monitor::reference::{Reference, ReferenceProfile};
use crate::monitor::window::Observation;
use crate::monitor::{Monitor, MonitorConfig, Snapshot};
use crate::progress::Progress;

/// What to report on.
#[derive(Debug, Clone)]
pub struct Options {
    /// A folder or an `s3://`, `gs://`, `az://`, `file://` URL: the log's root.
    pub log: String,
    pub reference: PathBuf,
    pub model: String,
    /// Microseconds since the epoch, inclusive.
    pub from: Option<i64>,
    /// Microseconds since the epoch, exclusive.
    pub to: Option<i64>,
    /// Time buckets the period is cut into.
    pub buckets: usize,
    pub out: PathBuf,
    pub json: Option<PathBuf>,
    /// A candidate store's folder: its best candidates are shown as thumbnails.
    pub candidates: Option<PathBuf>,
}

/// One logged prediction, as the monitor sees it.
#[derive(Debug, Clone)]
struct Row {
    request_id: String,
    ts_us: i64,
    version: String,
    class: usize,
    confidence: f32,
    entropy: f32,
    probabilities: Vec<f32>,
    inputs: [f32; 6],
    embedding: Option<Vec<f32>>,
    set_size: f32,
}

/// The JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub model_version: String,
    pub log: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub files: usize,
    /// Predictions of the reference's version in the period.
    pub rows: usize,
    /// Predictions of other versions in the period (left out: a version is compared only with
    /// its own reference).
    pub rows_other_versions: usize,
    /// Predictions with a delayed label.
    pub labeled_rows: usize,
    pub period: Snapshot,
    pub buckets: Vec<Bucket>,
    /// What the plots show beside the snapshots (histograms, class mix).
    #[serde(skip)]
    pub plots: html::PlotData,
    /// The best stored relabel candidates of the version (with `--candidates`).
    pub candidates: Vec<Thumbnail>,
}

/// A relabel candidate shown in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Thumbnail {
    pub request_id: String,
    pub predicted_label: String,
    pub confidence: f32,
    pub score: f64,
    #[serde(skip)]
    pub content_type: String,
    #[serde(skip)]
    pub image: Vec<u8>,
}

/// Candidates shown at most, and the largest image inlined.
const THUMBNAILS: usize = 12;
const THUMBNAIL_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// The best candidates of `version` in the store at `dir` (its validated index; images read only
/// from its `images/` folder, under the size bound).
fn thumbnails(dir: &Path, version: &str) -> anyhow::Result<Vec<Thumbnail>> {
    let mut stored = crate::relabel::read_index(dir)
        .with_context(|| format!("--candidates {}: cannot read its index.json", dir.display()))?;
    stored.retain(|c| c.model_version == version && c.bytes <= THUMBNAIL_MAX_BYTES);
    stored.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(stored
        .into_iter()
        .filter_map(|c| {
            let image = std::fs::read(dir.join("images").join(&c.file)).ok()?;
            Some(Thumbnail {
                request_id: c.candidate.request_id,
                predicted_label: c.predicted_label,
                confidence: c.candidate.confidence,
                score: c.score,
                content_type: c.content_type.unwrap_or_else(|| "image/png".into()),
                image,
            })
        })
        .take(THUMBNAILS)
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// Where the log is: a store and the key of its root.
fn open_log(log: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, Key)> {
    let url = if log.contains("://") {
        Url::parse(log).with_context(|| format!("--log {log} is not a URL"))?
    } else {
        let dir =
            std::fs::canonicalize(log).with_context(|| format!("--log {log}: no such folder"))?;
        Url::from_directory_path(&dir)
            .map_err(|()| anyhow::anyhow!("--log {log}: not an absolute folder"))?
    };
    crate::log::open_store(&url, std::time::Duration::from_secs(120))
        .map_err(|e| anyhow::anyhow!("--log: {e}"))
}

/// `(start, end)` in microseconds of a partition key's `date=`/`hour=` parts, when it has them.
fn partition_range(key: &str) -> Option<(i64, i64)> {
    let mut date = None;
    let mut hour = None;
    for part in key.split('/') {
        if let Some(d) = part.strip_prefix("date=") {
            let mut it = d.split('-');
            let y: i64 = it.next()?.parse().ok()?;
            let m: u32 = it.next()?.parse().ok()?;
            let dd: u32 = it.next()?.parse().ok()?;
            date = Some(crate::time::days_from_civil(y, m, dd));
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = Some(h.parse::<i64>().ok()?);
        }
    }
    let day = date? * 86_400_000_000;
    Some(match hour {
        Some(h) => (day + h * 3_600_000_000, day + (h + 1) * 3_600_000_000),
        None => (day, day + 86_400_000_000),
    })
}

/// The completed Parquet files under `root` whose partition overlaps the period.
async fn files(
    store: &dyn ObjectStore,
    root: &Key,
    from: Option<i64>,
    to: Option<i64>,
) -> anyhow::Result<Vec<Key>> {
    let objects: Vec<_> = store
        .list(Some(root))
        .try_collect()
        .await
        .with_context(|| format!("listing {root}"))?;
    let mut keys: Vec<Key> = objects
        .into_iter()
        .map(|o| o.location)
        .filter(|k| {
            let name = k.filename().unwrap_or_default();
            name.ends_with(".parquet") && !name.starts_with('.')
        })
        .filter(|k| match partition_range(k.as_ref()) {
            Some((start, end)) => from.is_none_or(|f| end > f) && to.is_none_or(|t| start < t),
            None => true,
        })
        .collect();
    keys.sort();
    Ok(keys)
}

async fn batches(store: &dyn ObjectStore, key: &Key) -> anyhow::Result<Vec<RecordBatch>> {
    let bytes = store
        .get(key)
        .await
        .with_context(|| format!("reading {key}"))?
        .bytes()
        .await
        .with_context(|| format!("reading {key}"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .with_context(|| format!("{key} is not a Parquet file"))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("decoding {key}"))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a Arc<dyn Array>> {
    batch
        .column_by_name(name)
        .with_context(|| format!("no column `{name}`"))
}

/// The rows of one prediction batch (columns of DESIGN.md's schema).
fn prediction_rows(batch: &RecordBatch, out: &mut Vec<Row>) -> anyhow::Result<()> {
    let ids = column(batch, "request_id")?
        .as_string_opt::<i32>()
        .context("request_id")?;
    let ts = column(batch, "ts")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .context("ts")?;
    let version = column(batch, "model_version")?
        .as_string_opt::<i32>()
        .context("model_version")?;
    let class = column(batch, "predicted_class")?
        .as_primitive_opt::<Int32Type>()
        .context("predicted_class")?;
    let f32_column = |name: &str| -> anyhow::Result<_> {
        column(batch, name)?
            .as_primitive_opt::<Float32Type>()
            .with_context(|| format!("{name} is not Float32"))
    };
    let confidence = f32_column("confidence")?;
    let entropy = f32_column("entropy")?;
    let probabilities = column(batch, "probabilities")?
        .as_list_opt::<i32>()
        .context("probabilities")?;
    let embedding = batch
        .column_by_name("embedding")
        .and_then(|c| c.as_list_opt::<i32>());
    let stats: Vec<Option<&arrow_array::Float32Array>> =
        ["brightness", "contrast", "sharpness", "saturation"]
            .iter()
            .map(|n| {
                batch
                    .column_by_name(n)
                    .and_then(|c| c.as_primitive_opt::<Float32Type>())
            })
            .collect();
    let sizes: Vec<Option<&arrow_array::Int32Array>> = ["image_width", "image_height"]
        .iter()
        .map(|n| {
            batch
                .column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
        })
        .collect();
    let sets = batch
        .column_by_name("prediction_set")
        .and_then(|c| c.as_list_opt::<i32>());
    let floats = |list: &arrow_array::ListArray, i: usize| -> Option<Vec<f32>> {
        if list.is_null(i) {
            return None;
        }
        Some(
            list.value(i)
                .as_primitive_opt::<Float32Type>()?
                .iter()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect(),
        )
    };
    for i in 0..batch.num_rows() {
        let Ok(class_index) = usize::try_from(class.value(i)) else {
            continue;
        };
        let mut inputs = [f32::NAN; 6];
        for (slot, s) in inputs.iter_mut().zip(&stats) {
            if let Some(s) = s.filter(|s| s.is_valid(i)) {
                *slot = s.value(i);
            }
        }
        for (slot, s) in inputs[4..].iter_mut().zip(&sizes) {
            if let Some(s) = s.filter(|s| s.is_valid(i)) {
                *slot = s.value(i) as f32;
            }
        }
        out.push(Row {
            request_id: ids.value(i).to_string(),
            ts_us: ts.value(i),
            version: version.value(i).to_string(),
            class: class_index,
            confidence: confidence.value(i),
            entropy: entropy.value(i),
            probabilities: floats(probabilities, i).unwrap_or_default(),
            inputs,
            embedding: embedding.and_then(|e| floats(e, i)),
            set_size: sets
                .filter(|s| s.is_valid(i))
                .map_or(f32::NAN, |s| s.value(i).len() as f32),
        });
    }
    Ok(())
}

/// Delayed labels: request id → (ts, class), the latest label of each id.
fn feedback_rows(
    batch: &RecordBatch,
    out: &mut HashMap<String, (i64, usize)>,
) -> anyhow::Result<()> {
    let ids = column(batch, "request_id")?
        .as_string_opt::<i32>()
        .context("request_id")?;
    let ts = column(batch, "ts")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .context("ts")?;
    let class = column(batch, "class")?
        .as_primitive_opt::<Int32Type>()
        .context("class")?;
    for i in 0..batch.num_rows() {
        let Ok(c) = usize::try_from(class.value(i)) else {
            continue;
        };
        let entry = out.entry(ids.value(i).to_string()).or_insert((i64::MIN, c));
        if ts.value(i) >= entry.0 {
            *entry = (ts.value(i), c);
        }
    }
    Ok(())
}

/// Evaluates `rows` with a monitor of their own: every row in the window, the labeled ones in
/// the labeled window; no sequential detectors (a report has no stream to watch).
fn evaluate(
    model: &str,
    rows: &[&Row],
    labels: &HashMap<String, (i64, usize)>,
    reference: &Reference,
    config: &MonitorConfig,
) -> Snapshot {
    let mut config = config.clone();
    config.window = rows.len().max(1);
    config.labeled_window = rows.len().max(1);
    config.max_age = None;
    config.sequential = None;
    config.state_file = None;
    let dim = reference.embeddings.as_ref().map_or(0, |(_, d)| *d);
    let monitor = Monitor::new(model, config, reference.clone(), dim, Metrics::new(model));
    let classes = reference.labels.len();
    for r in rows {
        if r.probabilities.len() != classes || r.class >= classes {
            continue;
        }
        monitor.observe(&Observation {
            ts_us: r.ts_us,
            class: r.class,
            confidence: r.confidence,
            entropy: r.entropy,
            probabilities: &r.probabilities,
            inputs: r.inputs,
            embedding: r.embedding.as_deref().filter(|e| e.len() == dim),
            set_size: r.set_size,
            correct: f32::NAN,
        });
        if let Some((_, class)) = labels.get(&r.request_id) {
            monitor.observe_label(&r.probabilities, *class, &r.request_id);
        }
    }
    (*monitor.evaluate_now()).clone()
}

/// Reads the log, evaluates the period and its buckets, writes the HTML and the JSON.
pub fn run(options: &Options, config: &MonitorConfig) -> anyhow::Result<Summary> {
    if options.buckets == 0 {
        bail!("--buckets must be at least 1");
    }
    if let (Some(f), Some(t)) = (options.from, options.to)
        && f >= t
    {
        bail!("--from must come before --to");
    }
    let text = std::fs::read(&options.reference)
        .with_context(|| format!("cannot read the reference {}", options.reference.display()))?;
    let profile: ReferenceProfile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a reference profile", options.reference.display()))?;
    let reference = Reference::prepare(&profile, config.apply_temperature, config.settings.seed)
        .map_err(|e| anyhow::anyhow!("reference {}: {e}", options.reference.display()))?;

    let (store, root) = open_log(&options.log)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let child = |parts: &[&str]| -> Key {
        root.parts()
            .chain(parts.iter().map(|p| object_store::path::PathPart::from(*p)))
            .collect()
    };
    let model_part = format!("model={}", options.model);
    let (prediction_files, feedback_files) = runtime.block_on(async {
        let p = files(
            store.as_ref(),
            &child(&["predictions", &model_part]),
            options.from,
            options.to,
        )
        .await?;
        let f = files(store.as_ref(), &child(&["feedback"]), options.from, None).await?;
        anyhow::Ok((p, f))
    })?;
    if prediction_files.is_empty() {
        bail!(
            "no prediction files for model `{}` under {} in the period",
            options.model,
            options.log
        );
    }
    let mut progress = Progress::new(prediction_files.len() + feedback_files.len());
    let mut rows = Vec::new();
    let mut labels = HashMap::new();
    runtime.block_on(async {
        for key in &prediction_files {
            for batch in batches(store.as_ref(), key).await? {
                prediction_rows(&batch, &mut rows).with_context(|| format!("{key}"))?;
            }
            progress.advance(
                1,
                ("reading the log ", 30, "="),
                |done, total| format!("{done}/{total} files, {} rows", rows.len()),
                |done, total| {
                    eprintln!("reading the log: {done}/{total} files, {} rows", rows.len())
                },
            );
        }
        for key in &feedback_files {
            for batch in batches(store.as_ref(), key).await? {
                feedback_rows(&batch, &mut labels).with_context(|| format!("{key}"))?;
            }
            progress.advance(
                1,
                ("reading the log ", 30, "="),
                |done, total| format!("{done}/{total} files, {} rows", rows.len()),
                |done, total| {
                    eprintln!("reading the log: {done}/{total} files, {} rows", rows.len())
                },
            );
        }
        anyhow::Ok(())
    })?;
    let in_period = |r: &Row| {
        options.from.is_none_or(|f| r.ts_us >= f) && options.to.is_none_or(|t| r.ts_us < t)
    };
    rows.retain(in_period);
    let all = rows.len();
    rows.retain(|r| r.version == reference.model_version);
    rows.sort_by_key(|r| r.ts_us);
    if rows.is_empty() {
        bail!(
            "none of the {all} predictions in the period are of the reference's model version {} \
             (a version is compared only with its own reference)",
            reference.model_version
        );
    }
    let refs: Vec<&Row> = rows.iter().collect();
    let period = evaluate(&options.model, &refs, &labels, &reference, config);

    let start = options.from.unwrap_or(rows[0].ts_us);
    let end = options.to.unwrap_or(rows[rows.len() - 1].ts_us + 1);
    let width = ((end - start) as u64)
        .div_ceil(options.buckets as u64)
        .max(1) as i64;
    let mut buckets = Vec::new();
    for b in 0..options.buckets as i64 {
        let (lo, hi) = (start + b * width, (start + (b + 1) * width).min(end));
        if lo >= end {
            break;
        }
        let inside: Vec<&Row> = refs
            .iter()
            .copied()
            .filter(|r| r.ts_us >= lo && r.ts_us < hi)
            .collect();
        if inside.is_empty() {
            continue;
        }
        buckets.push(Bucket {
            from: crate::time::rfc3339(lo),
            to: crate::time::rfc3339(hi),
            snapshot: evaluate(&options.model, &inside, &labels, &reference, config),
        });
    }
    let labeled_rows = rows
        .iter()
        .filter(|r| labels.contains_key(&r.request_id))
        .count();
    let mut plots = html::PlotData::new(
        &reference,
        rows.iter().map(|r| (r.class, r.confidence, r.entropy)),
    );
    if let Some((ref_embeddings, dim)) = &reference.embeddings {
        let step = rows.len().div_ceil(MAP_POINTS).max(1);
        let period: Vec<&[f32]> = rows
            .iter()
            .step_by(step)
            .filter_map(|r| r.embedding.as_deref().filter(|e| e.len() == *dim))
            .collect();
        let reference_rows: Vec<&[f32]> = ref_embeddings.chunks_exact(*dim).collect();
        if let Some((r, p)) = pca_map(&reference_rows, &period) {
            plots.embedding_reference = r;
            plots.embedding_period = p;
        }
    }
    let summary = Summary {
        model: options.model.clone(),
        model_version: reference.model_version.clone(),
        log: options.log.clone(),
        from: options.from.map(crate::time::rfc3339),
        to: options.to.map(crate::time::rfc3339),
        files: prediction_files.len(),
        rows: rows.len(),
        rows_other_versions: all - rows.len(),
        labeled_rows,
        period,
        buckets,
        plots,
        candidates: match &options.candidates {
            Some(dir) => thumbnails(dir, &reference.model_version)?,
            None => Vec::new(),
        },
    };
    write(&options.out, html::render(&summary, &reference).as_bytes())?;
    if let Some(json) = &options.json {
        let text = serde_json::to_string_pretty(&summary)?;
        write(json, format!("{text}\n").as_bytes())?;
    }
    Ok(summary)
}

/// Period predictions on the embedding map at most (every k-th).
const MAP_POINTS: usize = 1000;

/// Points on a 2-D map: the reference's and the period's.
type Map = (Vec<(f64, f64)>, Vec<(f64, f64)>);

/// The reference's and the period's embeddings on the reference's first two principal
/// components (centred on the reference's mean; power iteration with deflation on its
/// covariance). `None` without at least two reference rows of one dimension.
fn pca_map(reference: &[&[f32]], period: &[&[f32]]) -> Option<Map> {
    let dim = reference.first()?.len();
    if reference.len() < 2 || dim == 0 || reference.iter().any(|r| r.len() != dim) {
        return None;
    }
    let n = reference.len() as f64;
    let mut mean = vec![0.0f64; dim];
    for r in reference {
        for (m, v) in mean.iter_mut().zip(*r) {
            *m += f64::from(*v) / n;
        }
    }
    let mut cov = vec![0.0f64; dim * dim];
    for r in reference {
        for i in 0..dim {
            let a = f64::from(r[i]) - mean[i];
            for j in 0..dim {
                cov[i * dim + j] += a * (f64::from(r[j]) - mean[j]) / (n - 1.0);
            }
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        // A fixed, generic start (not orthogonal to any axis), then 200 steps.
        let mut v: Vec<f64> = (0..dim).map(|i| 1.0 + (i + c) as f64 * 0.1).collect();
        let mut eigenvalue = 0.0;
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..dim)
                .map(|i| (0..dim).map(|j| cov[i * dim + j] * v[j]).sum())
                .collect();
            for u in &components {
                let dot: f64 = w.iter().zip(u).map(|(a, b)| a * b).sum();
                for (x, y) in w.iter_mut().zip(u) {
                    *x -= dot * y;
                }
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                break;
            }
            eigenvalue = norm;
            v = w.into_iter().map(|x| x / norm).collect();
        }
        if eigenvalue == 0.0 {
            v = vec![0.0; dim];
        }
        components.push(v);
    }
    let project = |rows: &[&[f32]]| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.len() == dim)
            .map(|r| {
                let at = |u: &[f64]| -> f64 {
                    r.iter()
                        .zip(&mean)
                        .zip(u)
                        .map(|((v, m), c)| (f64::from(*v) - m) * c)
                        .sum()
                };
                (at(&components[0]), at(&components[1]))
            })
            .collect()
    };
    Some((project(reference), project(period)))
}

/// Writes a file through a temporary name beside it.
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut temp = name.to_os_string();
    temp.push(".tmp");
    let temp = path.with_file_name(temp);
    std::fs::write(&temp, bytes).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_keeps_the_reference_spread_on_its_first_axis() {
        // Reference points along (1, 1, 0) with a little spread along (0, 0, 1).
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                let t = i as f32 - 25.0;
                vec![t, t, 0.1 * ((i % 5) as f32 - 2.0)]
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let period: Vec<f32> = vec![10.0, 10.0, 0.0];
        let (r, p) = pca_map(&refs, &[period.as_slice()]).unwrap();
        assert_eq!(r.len(), 50);
        // The first axis carries the spread: |x| = |t - mean| * sqrt(2); the second the small one.
        let mean_t = -0.5f64;
        assert!(
            (r[0].0.abs() - (25.0 + mean_t) * 2f64.sqrt()).abs() < 1e-3,
            "{:?}",
            r[0]
        );
        assert!(r.iter().all(|(_, y)| y.abs() < 0.5));
        assert!(
            (p[0].0.abs() - (10.0 - mean_t) * 2f64.sqrt()).abs() < 1e-3,
            "{:?}",
            p[0]
        );
        assert!(pca_map(&[], &[]).is_none());
    }

    #[test]
    fn partitions_bound_the_files_read() {
        let day = crate::time::days_from_civil(2026, 12, 6) * 86_400_000_000;
        assert_eq!(
            partition_range("p/predictions/model=m/date=2026-12-06/hour=22/x.parquet"),
            Some((day + 22 * 3_600_000_000, day + 23 * 3_600_000_000))
        );
        assert_eq!(
            partition_range("feedback/date=2026-12-06/x.parquet"),
            Some((day, day + 86_400_000_000))
        );
        assert_eq!(partition_range("other/x.parquet"), None);
        assert_eq!(partition_range("date=2026-12/x.parquet"), None);
    }
}
