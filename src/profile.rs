//! `shiftwatch reference`: run the model over a folder of validation images and write the
//! reference profile the monitor compares live traffic with.
//!
//! The IO edge of the monitor: reads images (and optionally a `file,label` CSV), runs them
//! through exactly the serving path (decode, preprocess, batched inference, input statistics,
//! image descriptors), and writes `monitor::reference::ReferenceProfile` as JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::Config;
use crate::image_stats::describe;
use crate::model;
use crate::monitor::reference::{FORMAT, ReferenceProfile, subsample};
use crate::monitor::window::INPUT_FEATURES;
use crate::preprocess;
use crate::progress::Progress;

/// Options of `shiftwatch reference`.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    pub images: PathBuf,
    pub labels: Option<PathBuf>,
    pub out: PathBuf,
    /// Samples kept at most (a seeded subsample beyond).
    pub max_samples: usize,
    pub seed: u64,
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

fn read_labels(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.trim() != "file,label" {
        bail!("{}: the first line must be `file,label`", path.display());
    }
    let mut labels = HashMap::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((file, label)) = line.split_once(',') else {
            bail!("{}: line {} is not `file,label`", path.display(), i + 2);
        };
        labels.insert(file.trim().to_string(), label.trim().to_string());
    }
    Ok(labels)
}

/// Builds the profile and writes it to `options.out`.
pub fn build(
    config: &Config,
    model: &crate::model::config::ModelConfig,
    options: &ProfileOptions,
) -> anyhow::Result<ReferenceProfile> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&options.images)
        .with_context(|| format!("cannot list {}", options.images.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no images in {}", options.images.display());
    }
    let labels = options.labels.as_deref().map(read_labels).transpose()?;

    let mut loaded = config.load_model(model).context("cannot load the model")?;
    let spec = loaded.spec.clone();
    let session = &mut loaded.sessions[0];
    let classes = spec.num_classes();
    let true_classes: Option<Vec<usize>> = match &labels {
        None => None,
        Some(map) => {
            let mut t = Vec::with_capacity(files.len());
            for f in &files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let label = map
                    .get(name)
                    .with_context(|| format!("{name} has no row in the labels file"))?;
                let class = spec
                    .labels
                    .iter()
                    .position(|l| l == label)
                    .with_context(|| {
                        format!("{name}: label `{label}` is not one of the model's classes")
                    })?;
                t.push(class);
            }
            Some(t)
        }
    };

    let keep = subsample(files.len(), options.max_samples, options.seed);
    let mut probabilities = Vec::with_capacity(keep.len());
    let mut embeddings: Vec<Vec<f32>> = Vec::new();
    let mut descriptors: Vec<Vec<f32>> = Vec::with_capacity(keep.len());
    let mut inputs: BTreeMap<String, Vec<f32>> = INPUT_FEATURES
        .iter()
        .map(|f| (f.to_string(), Vec::new()))
        .collect();
    let per_image = spec.preprocess.tensor_len();
    let batch = config.inference.max_batch.min(spec.max_batch).max(1);
    let mut progress = Progress::new(keep.len());
    for chunk in keep.chunks(batch) {
        let mut tensor = vec![0f32; chunk.len() * per_image];
        for (slot, &i) in chunk.iter().enumerate() {
            let bytes = std::fs::read(&files[i])
                .with_context(|| format!("cannot read {}", files[i].display()))?;
            let decoded = preprocess::decode(&bytes, None, &config.limits)
                .with_context(|| format!("{}", files[i].display()))?;
            preprocess::to_tensor(
                &decoded.image,
                &spec.preprocess,
                &mut tensor[slot * per_image..(slot + 1) * per_image],
            );
            let described = describe(&decoded.image);
            for (name, v) in INPUT_FEATURES.iter().zip(described.stats.values()) {
                inputs.get_mut(*name).expect("every feature").push(v);
            }
            descriptors.push(described.descriptor.to_vec());
        }
        let outputs = model::run_batch(session, &spec, &tensor, chunk.len())?;
        for o in outputs {
            probabilities.push(o.probabilities);
            if let Some(e) = o.embedding {
                embeddings.push(e);
            }
        }
        progress.advance(
            chunk.len(),
            ("  ", 40, "#"),
            |done, total| format!("{done}/{total} images"),
            |done, total| tracing::info!(done, total, "profiling images"),
        );
    }
    let mut profile = ReferenceProfile {
        format: FORMAT.into(),
        model: spec.name.clone(),
        model_version: spec.version.clone(),
        labels: spec.labels.clone(),
        n_images: files.len(),
        probabilities,
        true_classes: true_classes.map(|t| keep.iter().map(|&i| t[i]).collect()),
        inputs,
        embeddings: (embeddings.len() == keep.len() && !embeddings.is_empty())
            .then_some(embeddings),
        descriptors: Some(descriptors),
        summary: None,
    };
    debug_assert_eq!(profile.labels.len(), classes);
    profile.summary = Some(profile.summarize().map_err(anyhow::Error::msg)?);
    if let Some(dir) = options.out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = options.out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&profile)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &options.out)
        .with_context(|| format!("cannot write {}", options.out.display()))?;
    Ok(profile)
}
