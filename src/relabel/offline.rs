//! Offline selection: candidates rebuilt from the Parquet log for the images the store kept.
//!
//! `shiftwatch candidates export` runs beside (or after) the sidecar: it reads the store's index
//! for the request ids whose images are kept, reads those ids' rows from the prediction log
//! (the record of truth: scores, flags, dHash, embedding), and selects and exports from them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::StoredCandidate;
use super::select::Candidate;
use crate::prediction::Flag;

/// One logged prediction, as far as selection needs it.
#[derive(Debug, Clone)]
pub struct LoggedPrediction {
    pub candidate: Candidate,
    pub predicted_label: String,
    pub model_version: String,
}

fn parquet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if p.is_dir() {
            parquet_files(&p, out);
        } else if !hidden && p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

fn f32_list(batch: &RecordBatch, name: &str, row: usize) -> Option<Vec<f32>> {
    let col = batch.column_by_name(name)?.as_list_opt::<i32>()?;
    if col.is_null(row) {
        return None;
    }
    let values = col.value(row);
    Some(values.as_primitive::<Float32Type>().values().to_vec())
}

/// Reads the rows of `wanted` request ids from every Parquet file of `model` under `log_dir`.
pub fn read_predictions(
    log_dir: &Path,
    model: &str,
    wanted: &std::collections::HashSet<String>,
) -> anyhow::Result<HashMap<String, LoggedPrediction>> {
    let mut files = Vec::new();
    parquet_files(
        &log_dir.join("predictions").join(format!("model={model}")),
        &mut files,
    );
    files.sort();
    let mut found = HashMap::new();
    for path in files {
        let file = File::open(&path)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .build()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for batch in reader {
            let batch = batch.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| anyhow::anyhow!("{}: no column {name}", path.display()))
            };
            let ids = col("request_id")?.as_string::<i32>();
            let ts = col("ts")?.as_primitive::<TimestampMicrosecondType>();
            let class = col("predicted_class")?.as_primitive::<Int32Type>();
            let label = col("predicted_label")?.as_string::<i32>();
            let version = col("model_version")?.as_string::<i32>();
            let confidence = col("confidence")?.as_primitive::<Float32Type>();
            let margin = col("margin")?.as_primitive::<Float32Type>();
            let entropy = col("entropy")?.as_primitive::<Float32Type>();
            let dhash = col("image_dhash")?.as_primitive::<UInt64Type>();
            let flags = col("flags")?.as_list::<i32>();
            for row in 0..batch.num_rows() {
                let id = ids.value(row);
                if !wanted.contains(id) || found.contains_key(id) {
                    continue;
                }
                let row_flags = flags.value(row);
                let row_flags = row_flags.as_string::<i32>();
                let has = |f: Flag| {
                    (0..row_flags.len()).any(|i| Flag::parse(row_flags.value(i)) == Some(f))
                };
                let vector = f32_list(&batch, "embedding", row)
                    .or_else(|| f32_list(&batch, "probabilities", row))
                    .unwrap_or_default();
                found.insert(
                    id.to_string(),
                    LoggedPrediction {
                        candidate: Candidate {
                            request_id: id.to_string(),
                            predicted_class: class.value(row).max(0) as usize,
                            confidence: confidence.value(row),
                            margin: margin.value(row),
                            entropy: entropy.value(row),
                            dhash: if dhash.is_null(row) {
                                0
                            } else {
                                dhash.value(row)
                            },
                            vector,
                            ood: has(Flag::OodSuspect),
                            // Not logged: a flagged row counts as just out.
                            ood_score: 0.0,
                            shifted: has(Flag::ShiftedWindow),
                            random: false,
                            ts_us: ts.value(row),
                        },
                        predicted_label: label.value(row).to_string(),
                        model_version: version.value(row).to_string(),
                    },
                );
            }
        }
    }
    Ok(found)
}

/// Stored candidates joined with their logged predictions: the candidate comes from the log
/// (the record of truth), the random-sample mark and the image from the store. Returns the
/// joined ones and how many had no row yet.
pub fn join(
    stored: &[StoredCandidate],
    logged: &HashMap<String, LoggedPrediction>,
) -> (Vec<StoredCandidate>, usize) {
    let mut joined = Vec::new();
    let mut missing = 0;
    for s in stored {
        match logged.get(&s.candidate.request_id) {
            Some(l) => {
                let mut c = l.candidate.clone();
                c.random = s.candidate.random;
                if c.dhash == 0 {
                    // A row without an image hash: the store computed it from the same bytes.
                    c.dhash = s.candidate.dhash;
                }
                let mut s = s.clone();
                s.candidate = c;
                s.predicted_label = l.predicted_label.clone();
                s.model_version = l.model_version.clone();
                joined.push(s);
            }
            None => missing += 1,
        }
    }
    (joined, missing)
}
