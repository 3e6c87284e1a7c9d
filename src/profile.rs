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
use crate::monitor::augment::{apply_recipe, makes_outlier, recipe_label, recipes};
use crate::monitor::correctness::{
    self, CorrectnessProfile, FEATURES, FitSet, Inputs, NEIGHBORS, PARAMS,
};
use crate::monitor::reference::{FORMAT, ReferenceProfile, subsample};
use crate::monitor::window::INPUT_FEATURES;
use crate::preprocess;
use crate::progress::Progress;
use crate::relabel::ood::OodDetector;
use crate::stats;

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

/// A `file,label` CSV (header first, blank lines skipped) as (file, label) pairs in file order,
/// both trimmed; `shiftwatch estimates` reads its folders' `labels.csv` with it too.
pub(crate) fn read_label_rows(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.trim() != "file,label" {
        bail!("{}: the first line must be `file,label`", path.display());
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((file, label)) = line.split_once(',') else {
            bail!("{}: line {} is not `file,label`", path.display(), i + 2);
        };
        rows.push((file.trim().to_string(), label.trim().to_string()));
    }
    Ok(rows)
}

fn read_labels(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    Ok(read_label_rows(path)?.into_iter().collect())
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

    let mut loaded = config
        .load_model_one_session(model)
        .context("cannot load the model")?;
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
    let batch = config.inference.offline_batch(spec.max_batch);
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
        correctness: None,
        summary: None,
    };
    debug_assert_eq!(profile.labels.len(), classes);
    if profile.true_classes.is_some() {
        let kept: Vec<&Path> = keep.iter().map(|&i| files[i].as_path()).collect();
        match fit_correctness(config, &spec, session, &kept, &profile, options.seed) {
            Ok(c) => profile.correctness = Some(c),
            Err(e) => tracing::warn!(error = %format!("{e:#}"),
                "no correctness model: the served accuracy estimate falls back to ATC"),
        }
    }
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

/// Reference images altered for the correctness fit, at most (a seeded subsample beyond).
pub const AUGMENT_SOURCES: usize = 1000;

/// Fits the correctness model (see `monitor::correctness`): every profiled image as it is,
/// and the altered copies (`monitor::augment::recipes`) of up to [`AUGMENT_SOURCES`] of them, each measured
/// against the other reference rows.
fn fit_correctness(
    config: &Config,
    spec: &model::ModelSpec,
    session: &mut ort::session::Session,
    files: &[&Path],
    profile: &ReferenceProfile,
    seed: u64,
) -> anyhow::Result<CorrectnessProfile> {
    let truth = profile.true_classes.as_deref().context("no labels")?;
    let detector = OodDetector::fit(
        profile.embeddings.as_deref(),
        profile.descriptors.as_deref(),
        0.99,
    )?;
    let (has_embeddings, has_descriptors) = detector.spaces();
    let used = correctness::usable_features(has_embeddings, has_descriptors);
    let k = profile.labels.len();
    let n = profile.probabilities.len();
    let column = |name: &str| -> Vec<f64> {
        profile
            .inputs
            .get(name)
            .map(|v| v.iter().map(|x| f64::from(*x)).collect())
            .unwrap_or_default()
    };
    let stats_columns = [column("brightness"), column("contrast")];
    let mut input_mean = [0.0; 2];
    let mut input_std = [1.0; 2];
    for (j, c) in stats_columns.iter().enumerate() {
        if c.len() == n && n > 1 {
            let m = stats::mean(c);
            input_mean[j] = m;
            input_std[j] = (c.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64).sqrt();
        }
    }
    let mut rows: Vec<f64> = Vec::new();
    let mut correct: Vec<bool> = Vec::new();
    let mut push = |probabilities: &[f32],
                    embedding: Option<&[f32]>,
                    descriptor: Option<&[f32]>,
                    st: [f32; 2],
                    source: usize,
                    outlier: bool|
     -> bool {
        let proximity = detector.proximity(embedding, descriptor, NEIGHBORS, Some(source));
        let all = correctness::all_features(
            &Inputs {
                probabilities,
                proximity: &proximity,
                stats: Some(st),
            },
            truth,
            &input_mean,
            &input_std,
        );
        rows.extend(used.iter().map(|&i| all[i]));
        let right = !outlier && crate::prediction::summarize(probabilities).class == truth[source];
        correct.push(right);
        right
    };
    let mut sets = Vec::new();
    let mut nuclear = Vec::new();
    // The reference itself.
    let mut right = 0usize;
    for i in 0..n {
        let st = [0, 1].map(|j| stats_columns[j].get(i).map_or(f32::NAN, |v| *v as f32));
        right += usize::from(push(
            &profile.probabilities[i],
            profile.embeddings.as_ref().map(|e| &e[i][..]),
            profile.descriptors.as_ref().map(|d| &d[i][..]),
            st,
            i,
            false,
        ));
    }
    let flat: Vec<f32> = profile.probabilities.iter().flatten().copied().collect();
    sets.push(fit_set("reference", n, right, &flat, k));
    nuclear.push((
        stats::estimate::nuclear_norm_score(&flat, k),
        right as f64 / n as f64,
    ));

    // Altered copies, decoded once per source image.
    let sources = subsample(n, AUGMENT_SOURCES, seed);
    let mut rng = stats::random::SplitMix64::new(seed ^ 0x00a0_6e17);
    let per_image = spec.preprocess.tensor_len();
    let recipes = recipes();
    let mut set_probs: Vec<Vec<f32>> = vec![Vec::new(); recipes.len()];
    let mut set_right = vec![0usize; recipes.len()];
    let mut progress = Progress::new(sources.len());
    for chunk in sources.chunks(8) {
        let count = chunk.len() * recipes.len();
        let mut tensor = vec![0f32; count * per_image];
        let mut meta: Vec<(usize, usize, [f32; 2], Vec<f32>)> = Vec::with_capacity(count);
        for &src in chunk {
            let bytes = std::fs::read(files[src])
                .with_context(|| format!("cannot read {}", files[src].display()))?;
            let decoded = preprocess::decode(&bytes, None, &config.limits)
                .with_context(|| format!("{}", files[src].display()))?;
            for (a, recipe) in recipes.iter().enumerate() {
                let altered = apply_recipe(recipe, &decoded.image, &mut rng);
                let slot = meta.len();
                preprocess::to_tensor(
                    &altered,
                    &spec.preprocess,
                    &mut tensor[slot * per_image..(slot + 1) * per_image],
                );
                let described = describe(&altered);
                let v = described.stats.values();
                meta.push((src, a, [v[0], v[1]], described.descriptor.to_vec()));
            }
        }
        let batch = config.inference.offline_batch(spec.max_batch);
        let mut outputs = Vec::with_capacity(count);
        for part in tensor.chunks(batch * per_image) {
            outputs.extend(model::run_batch(
                session,
                spec,
                part,
                part.len() / per_image,
            )?);
        }
        for ((src, a, st, descriptor), o) in meta.iter().zip(&outputs) {
            let ok = push(
                &o.probabilities,
                o.embedding.as_deref(),
                has_descriptors.then_some(&descriptor[..]),
                *st,
                *src,
                makes_outlier(&recipes[*a]),
            );
            set_right[*a] += usize::from(ok);
            set_probs[*a].extend_from_slice(&o.probabilities);
        }
        progress.advance(
            chunk.len(),
            ("  ", 40, "#"),
            |done, total| format!("{done}/{total} images altered {} ways", recipes.len()),
            |done, total| tracing::info!(done, total, "altering reference images"),
        );
    }
    for (a, recipe) in recipes.iter().enumerate() {
        let m = sources.len();
        sets.push(fit_set(
            &recipe_label(recipe),
            m,
            set_right[a],
            &set_probs[a],
            k,
        ));
        nuclear.push((
            stats::estimate::nuclear_norm_score(&set_probs[a], k),
            set_right[a] as f64 / m.max(1) as f64,
        ));
    }
    // The clean rows weigh as much as all the altered ones together.
    let altered = correct.len() - n;
    let mut weights = vec![1.0; correct.len()];
    for w in weights.iter_mut().take(n) {
        *w = (altered as f64 / n as f64).max(1.0);
    }
    let model = stats::boost::fit(&rows, used.len(), &correct, &weights, PARAMS)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (xs, ys): (Vec<f64>, Vec<f64>) = nuclear
        .into_iter()
        .filter_map(|(s, a)| s.map(|s| (s, a)))
        .unzip();
    Ok(CorrectnessProfile {
        features: used.iter().map(|&i| FEATURES[i].to_string()).collect(),
        input_mean,
        input_std,
        model,
        nuclear_fit: stats::estimate::linear_fit(&xs, &ys),
        sets,
    })
}

fn fit_set(name: &str, n: usize, right: usize, probabilities: &[f32], k: usize) -> FitSet {
    let confidences: Vec<f64> = probabilities
        .chunks_exact(k)
        .map(|p| f64::from(crate::prediction::summarize(p).confidence))
        .collect();
    FitSet {
        name: name.to_string(),
        n,
        accuracy: right as f64 / n.max(1) as f64,
        mean_confidence: stats::mean(&confidences),
    }
}
