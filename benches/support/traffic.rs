//! The bundled traffic through the bundled model, shared by the monitor and detection
//! benchmarks (each includes this file with `#[path]`).

use std::path::Path;

use shiftwatch::config;
use shiftwatch::image_stats::input_stats;
use shiftwatch::model;
use shiftwatch::monitor::reference::ReferenceProfile;
use shiftwatch::preprocess;

/// The bundled traffic folders, unshifted first.
pub const FOLDERS: [&str; 6] = [
    "normal",
    "blur",
    "brightness",
    "rotation",
    "class_prior",
    "ood",
];

/// A bundled reference profile (`make reference` writes them).
pub fn profile(root: &Path, path: &str) -> ReferenceProfile {
    serde_json::from_slice(
        &std::fs::read(root.join(path)).expect("reference profile (make reference)"),
    )
    .expect("profile")
}

/// One served prediction of a bundled image, with what the monitor sees of it.
#[derive(Clone)]
pub struct Sample {
    pub probabilities: Vec<f32>,
    pub embedding: Vec<f32>,
    pub inputs: [f32; 6],
    pub truth: Option<usize>,
}

/// Runs `model_path` over every image of a traffic folder.
pub fn samples(root: &Path, model_path: &str, folder: &str) -> Vec<Sample> {
    let mut cfg =
        config::load(&root.join("config/shiftwatch.toml"), std::env::vars()).expect("config");
    cfg.models[0].path = root.join(model_path);
    let mut loaded = cfg.load_model(&cfg.models[0]).expect("model");
    let spec = loaded.spec.clone();
    let dir = root.join("data/traffic").join(folder);
    let csv = std::fs::read_to_string(dir.join("labels.csv")).expect("labels.csv");
    let mut out = Vec::new();
    for line in csv.lines().skip(1).filter(|l| !l.is_empty()) {
        let (file, label) = line.split_once(',').expect("file,label");
        let bytes = std::fs::read(dir.join(file)).expect("image");
        let decoded = preprocess::decode(&bytes, None, &cfg.limits).expect("decodes");
        let mut tensor = vec![0f32; spec.preprocess.tensor_len()];
        preprocess::to_tensor(&decoded.image, &spec.preprocess, &mut tensor);
        let s = input_stats(&decoded.image);
        let o = model::run_batch(&mut loaded.sessions[0], &spec, &tensor, 1)
            .expect("inference")
            .remove(0);
        out.push(Sample {
            probabilities: o.probabilities,
            embedding: o.embedding.unwrap_or_default(),
            inputs: [
                s.brightness,
                s.contrast,
                s.sharpness,
                s.saturation,
                s.width as f32,
                s.height as f32,
            ],
            truth: spec.labels.iter().position(|l| l == label),
        });
    }
    out
}
