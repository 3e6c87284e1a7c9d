//! `[candidates]`: how relabel candidates are scored, stored and exported.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::select::{SelectionConfig, Uncertainty};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCandidates {
    pub enabled: bool,
    pub dir: String,
    pub export_dir: String,
    pub uncertainty: String,
    pub pool_size: usize,
    pub random_rate: f64,
    pub random_max: usize,
    pub random_half_life_hours: f64,
    pub max_disk_bytes: u64,
    pub retention_hours: f64,
    pub ood_boost: f64,
    pub ood_quantile: f64,
    pub ood_share: f64,
    pub ood_clusters: usize,
    pub shift_boost: f64,
    pub dhash_threshold: u32,
    pub random_share: f64,
    pub kcenter_pool_factor: usize,
    pub default_limit: usize,
    pub image_url_prefix: String,
    pub propagation_max_distance: f64,
}

impl Default for RawCandidates {
    fn default() -> Self {
        RawCandidates {
            enabled: true,
            dir: "runs/candidates".into(),
            export_dir: "runs/exports".into(),
            uncertainty: "entropy".into(),
            pool_size: 1000,
            random_rate: 0.01,
            random_max: 100,
            random_half_life_hours: 24.0,
            max_disk_bytes: 100 * 1024 * 1024,
            retention_hours: 168.0,
            ood_boost: 1.0,
            ood_quantile: 0.99,
            ood_share: 0.5,
            ood_clusters: 8,
            shift_boost: 0.5,
            dhash_threshold: 4,
            random_share: 0.1,
            kcenter_pool_factor: 3,
            default_limit: 100,
            image_url_prefix: "/data/local-files/?d=".into(),
            propagation_max_distance: 3.0,
        }
    }
}

/// The store's settings (the `[candidates]` config section, validated).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidatesConfig {
    /// The store's folder; with several models, each model's store is `<dir>/<model>`.
    pub dir: PathBuf,
    /// Where export packages go; with several models, `<export_dir>/<model>`.
    pub export_dir: PathBuf,
    pub pool_size: usize,
    pub random_rate: f64,
    pub random_max: usize,
    /// The random sample favours recent traffic: a prediction's weight doubles every
    /// half-life (`None`: every prediction weighs the same).
    pub random_half_life: Option<Duration>,
    pub max_disk_bytes: u64,
    pub retention: Option<Duration>,
    pub selection: SelectionConfig,
    /// How many candidates a listing or an export returns without a limit.
    pub default_limit: usize,
    /// The reference leave-one-out quantile that calibrates the out-of-distribution score
    /// (`ood::OodDetector`): a prediction farther out than it is flagged `ood_suspect`.
    pub ood_quantile: f64,
    /// An exported candidate whose nearest labeled prediction lies within this embedding
    /// distance gets that label as a second pre-annotation (0: never).
    pub propagation_max_distance: f64,
    /// What each task's image URL starts with; the image's path relative to `export_dir`
    /// follows.
    pub image_url_prefix: String,
}

impl CandidatesConfig {
    /// The settings of `model`'s store when `several` models are served (its own folders).
    pub fn for_model(&self, model: &str, several: bool, classes: usize) -> CandidatesConfig {
        let mut c = self.clone();
        if several {
            c.dir = c.dir.join(model);
            c.export_dir = c.export_dir.join(model);
        }
        c.selection.classes = classes;
        c
    }
}

impl RawCandidates {
    /// The validated settings, also when `candidates.enabled` is false (listing limits).
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> Option<CandidatesConfig> {
        let c = self;
        let uncertainty = Uncertainty::parse(&c.uncertainty);
        if uncertainty.is_none() {
            bad(
                "candidates.uncertainty",
                format!(
                    "`{}` is not one of `entropy`, `margin`, `least_confidence`",
                    c.uncertainty
                ),
            );
        }
        if c.enabled && (c.dir.is_empty() || c.export_dir.is_empty()) {
            bad(
                "candidates.dir",
                "candidates.dir and candidates.export_dir must name folders".into(),
            );
        }
        for (key, v) in [
            ("candidates.pool_size", c.pool_size as u64),
            ("candidates.max_disk_bytes", c.max_disk_bytes),
            (
                "candidates.kcenter_pool_factor",
                c.kcenter_pool_factor as u64,
            ),
            ("candidates.default_limit", c.default_limit as u64),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        for (key, v, hi) in [
            ("candidates.random_rate", c.random_rate, 1.0),
            ("candidates.random_share", c.random_share, 1.0),
            ("candidates.ood_boost", c.ood_boost, 100.0),
            ("candidates.ood_share", c.ood_share, 1.0),
            ("candidates.shift_boost", c.shift_boost, 100.0),
            ("candidates.retention_hours", c.retention_hours, f64::MAX),
            (
                "candidates.random_half_life_hours",
                c.random_half_life_hours,
                f64::MAX,
            ),
            (
                "candidates.propagation_max_distance",
                c.propagation_max_distance,
                f64::MAX,
            ),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                bad(
                    key,
                    if hi == f64::MAX {
                        "must be a number of at least 0".into()
                    } else {
                        format!("must be a number in 0..={hi}")
                    },
                );
            }
        }
        if let Err(e) = super::export::check_image_url_prefix(&c.image_url_prefix) {
            bad("candidates.image_url_prefix", e.to_string());
        }
        if !(c.ood_quantile.is_finite() && c.ood_quantile > 0.0 && c.ood_quantile <= 1.0) {
            bad(
                "candidates.ood_quantile",
                "must be a number in (0, 1], e.g. 0.99".into(),
            );
        }
        if c.ood_clusters == 0 {
            bad("candidates.ood_clusters", "must be at least 1".into());
        }
        if c.random_half_life_hours > 0.0 && c.random_half_life_hours < 0.001 {
            bad(
                "candidates.random_half_life_hours",
                "must be 0 (no decay) or at least 0.001 hours".into(),
            );
        }
        if c.dhash_threshold > 64 {
            bad(
                "candidates.dhash_threshold",
                "must be at most 64 (bits)".into(),
            );
        }
        c.enabled.then(|| CandidatesConfig {
            dir: PathBuf::from(c.dir),
            export_dir: PathBuf::from(c.export_dir),
            pool_size: c.pool_size,
            random_rate: c.random_rate,
            random_max: c.random_max,
            random_half_life: hours(c.random_half_life_hours),
            max_disk_bytes: c.max_disk_bytes,
            retention: hours(c.retention_hours),
            selection: SelectionConfig {
                uncertainty: uncertainty.unwrap_or(Uncertainty::Entropy),
                classes: 0,
                ood_boost: c.ood_boost,
                shift_boost: c.shift_boost,
                dhash_threshold: c.dhash_threshold,
                random_share: c.random_share,
                candidate_pool_factor: c.kcenter_pool_factor,
                ood_share: c.ood_share,
                ood_clusters: c.ood_clusters,
            },
            ood_quantile: c.ood_quantile,
            default_limit: c.default_limit,
            image_url_prefix: c.image_url_prefix,
            propagation_max_distance: c.propagation_max_distance,
        })
    }
}

/// A positive number of hours as a duration; 0 (or one too large for a `Duration`): none.
fn hours(h: f64) -> Option<Duration> {
    (h > 0.0)
        .then(|| Duration::try_from_secs_f64(h * 3600.0).ok())
        .flatten()
}
