//! `[monitor]`: the window, how often it is tested, and how tests decide.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::evaluate::{Settings, TestKind};
use super::sequential::SequentialSettings;
use crate::stats::conformal::Regularization;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMonitor {
    pub enabled: bool,
    pub reference: String,
    pub window: usize,
    pub max_age_seconds: f64,
    pub evaluate_every_seconds: f64,
    pub min_samples: usize,
    pub alpha: f64,
    pub overconfidence_min_effect: f64,
    pub clear_after: u32,
    pub labeled_window: usize,
    pub apply_temperature: bool,
    pub state_file: String,
    pub persist_every_seconds: f64,
    pub mmd_permutations: usize,
    pub mmd_max_window: usize,
    pub seed: u64,
    pub min_effect: RawMinEffect,
    pub sequential: bool,
    pub run_length: f64,
    pub tail_quantile: f64,
    pub tail_tolerance: f64,
    pub extreme_tolerance: f64,
    pub tolerance: RawTolerance,
    pub prediction_set_coverage: f64,
    pub prediction_set_penalty: f64,
    pub prediction_set_free_ranks: usize,
    pub prediction_set_temperature: bool,
}

impl Default for RawMonitor {
    fn default() -> Self {
        RawMonitor {
            enabled: true,
            reference: "models/digits.reference.json".into(),
            window: 1000,
            max_age_seconds: 0.0,
            evaluate_every_seconds: 5.0,
            min_samples: 100,
            alpha: 0.01,
            overconfidence_min_effect: 0.05,
            clear_after: 3,
            labeled_window: 1000,
            apply_temperature: false,
            state_file: "runs/monitor-window.json".into(),
            persist_every_seconds: 60.0,
            mmd_permutations: 100,
            mmd_max_window: 200,
            seed: 42,
            min_effect: RawMinEffect::default(),
            sequential: true,
            run_length: 1e6,
            tail_quantile: 0.02,
            tail_tolerance: 0.02,
            extreme_tolerance: 0.01,
            tolerance: RawTolerance::default(),
            prediction_set_coverage: 0.9,
            prediction_set_penalty: 0.01,
            prediction_set_free_ranks: 1,
            prediction_set_temperature: true,
        }
    }
}

/// `[monitor.tolerance]`: the effect size each family's sequential detector does not bet on,
/// one key per family that has a detector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct RawTolerance(pub BTreeMap<String, f64>);

impl Default for RawTolerance {
    fn default() -> Self {
        RawTolerance(
            TestKind::ALL
                .iter()
                .filter_map(|k| Some((k.as_str().to_string(), k.default_tolerance()?)))
                .collect(),
        )
    }
}

impl RawTolerance {
    fn validate(&self, bad: &mut dyn FnMut(&str, String)) -> [Option<f64>; TestKind::COUNT] {
        let mut out = TestKind::ALL.map(TestKind::default_tolerance);
        for (name, v) in &self.0 {
            let key = format!("monitor.tolerance.{name}");
            let kind = TestKind::parse(name).filter(|k| k.default_tolerance().is_some());
            let Some(kind) = kind else {
                let known: Vec<&str> = TestKind::ALL
                    .iter()
                    .filter(|k| k.default_tolerance().is_some())
                    .map(|k| k.as_str())
                    .collect();
                bad(
                    &key,
                    format!(
                        "no sequential detector for this family (known: {})",
                        known.join(", ")
                    ),
                );
                continue;
            };
            if !(v.is_finite() && (0.0..1.0).contains(v)) {
                bad(&key, "must be a number in [0, 1)".into());
            }
            out[kind.index()] = Some(*v);
        }
        out
    }
}

/// `[monitor.min_effect]`: the minimum effect size for an alert, one key per test family
/// ([`TestKind`] names them; a key outside that list is an error).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct RawMinEffect(pub BTreeMap<String, f64>);

impl Default for RawMinEffect {
    fn default() -> Self {
        RawMinEffect(
            TestKind::ALL
                .iter()
                .map(|k| (k.as_str().to_string(), k.default_min_effect()))
                .collect(),
        )
    }
}

impl RawMinEffect {
    fn validate(&self, bad: &mut dyn FnMut(&str, String)) -> [f64; TestKind::COUNT] {
        let mut out = TestKind::ALL.map(TestKind::default_min_effect);
        for (name, v) in &self.0 {
            let key = format!("monitor.min_effect.{name}");
            let Some(kind) = TestKind::parse(name) else {
                let known: Vec<&str> = TestKind::ALL.iter().map(|k| k.as_str()).collect();
                bad(
                    &key,
                    format!("unknown test family (known: {})", known.join(", ")),
                );
                continue;
            };
            if !(v.is_finite() && *v > 0.0) {
                bad(&key, "must be a positive number".into());
            }
            out[kind.index()] = *v;
        }
        out
    }
}

/// The monitor's settings (the `[monitor]` config section, validated).
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// The reference profile of the single `[model]` (models configured as `[models.<name>]`
    /// name their own).
    pub reference: Option<PathBuf>,
    pub window: usize,
    pub max_age: Option<Duration>,
    pub evaluate_every: Duration,
    pub settings: Settings,
    pub clear_after: u32,
    pub labeled_window: usize,
    pub apply_temperature: bool,
    /// Where the window is saved; with several models, each model's file has its name inserted
    /// before the extension (`monitor-window.<model>.json`).
    pub state_file: Option<PathBuf>,
    pub persist_every: Duration,
    /// `None` when `monitor.sequential` is false.
    pub sequential: Option<SequentialSettings>,
    /// The target coverage of prediction sets; `None` when off (0).
    pub prediction_set_coverage: Option<f64>,
    pub prediction_set_regularization: Regularization,
    /// Whether the set scores see the probabilities after a temperature fitted on the labeled
    /// reference.
    pub prediction_set_temperature: bool,
}

impl MonitorConfig {
    /// The state file of `model` when `several` models are served.
    pub fn state_file_for(&self, model: &str, several: bool) -> Option<PathBuf> {
        let path = self.state_file.as_ref()?;
        if !several {
            return Some(path.clone());
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("monitor-window");
        let name = match path.extension().and_then(|e| e.to_str()) {
            Some(ext) => format!("{stem}.{model}.{ext}"),
            None => format!("{stem}.{model}"),
        };
        Some(path.with_file_name(name))
    }
}

impl RawMonitor {
    /// `None` when `monitor.enabled` is false.
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> Option<MonitorConfig> {
        let m = self;
        for (key, v) in [
            ("monitor.window", m.window as u64),
            ("monitor.min_samples", m.min_samples as u64),
            ("monitor.labeled_window", m.labeled_window as u64),
            ("monitor.clear_after", u64::from(m.clear_after)),
            ("monitor.mmd_max_window", m.mmd_max_window as u64),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if m.window > 1_000_000 {
            bad("monitor.window", "must be at most 1000000".into());
        }
        if !(m.alpha > 0.0 && m.alpha < 1.0) {
            bad("monitor.alpha", "must be between 0 and 1".into());
        }
        if !(m.overconfidence_min_effect > 0.0 && m.overconfidence_min_effect <= 1.0) {
            bad(
                "monitor.overconfidence_min_effect",
                "must be above 0 and at most 1".into(),
            );
        }
        for (key, v) in [
            ("monitor.max_age_seconds", m.max_age_seconds),
            ("monitor.evaluate_every_seconds", m.evaluate_every_seconds),
            ("monitor.persist_every_seconds", m.persist_every_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bad(key, "must be a non-negative number".into());
            }
        }
        if m.evaluate_every_seconds < 0.05 {
            bad(
                "monitor.evaluate_every_seconds",
                "must be at least 0.05".into(),
            );
        }
        let min_effect = m.min_effect.validate(bad);
        let tolerance = m.tolerance.validate(bad);
        if !(m.run_length.is_finite() && m.run_length >= 1.0) {
            bad(
                "monitor.run_length",
                "must be a number of at least 1".into(),
            );
        }
        if !(m.tail_quantile > 0.0 && m.tail_quantile < 0.5) {
            bad("monitor.tail_quantile", "must be between 0 and 0.5".into());
        }
        for (key, v) in [
            ("monitor.tail_tolerance", m.tail_tolerance),
            ("monitor.extreme_tolerance", m.extreme_tolerance),
        ] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                bad(key, "must be a number in [0, 1)".into());
            }
        }
        if !(m.prediction_set_coverage == 0.0
            || (m.prediction_set_coverage > 0.0 && m.prediction_set_coverage < 1.0))
        {
            bad(
                "monitor.prediction_set_coverage",
                "must be 0 (off) or between 0 and 1".into(),
            );
        }
        if !(m.prediction_set_penalty.is_finite() && m.prediction_set_penalty >= 0.0) {
            bad(
                "monitor.prediction_set_penalty",
                "must be a non-negative number".into(),
            );
        }
        let seconds =
            |v: f64| Duration::from_secs_f64(if v.is_finite() { v.max(0.0) } else { 0.0 });
        m.enabled.then(|| MonitorConfig {
            reference: (!m.reference.is_empty()).then(|| PathBuf::from(m.reference)),
            window: m.window,
            max_age: (m.max_age_seconds > 0.0).then(|| seconds(m.max_age_seconds)),
            evaluate_every: seconds(m.evaluate_every_seconds),
            settings: Settings {
                min_samples: m.min_samples,
                alpha: m.alpha,
                overconfidence_min_effect: m.overconfidence_min_effect,
                min_effect,
                mmd_permutations: m.mmd_permutations,
                mmd_max_window: m.mmd_max_window,
                seed: m.seed,
            },
            clear_after: m.clear_after,
            labeled_window: m.labeled_window,
            apply_temperature: m.apply_temperature,
            state_file: (!m.state_file.is_empty()).then(|| PathBuf::from(m.state_file)),
            persist_every: seconds(m.persist_every_seconds),
            sequential: m.sequential.then(|| SequentialSettings {
                run_length: m.run_length,
                tail_quantile: m.tail_quantile,
                tail_tolerance: m.tail_tolerance,
                extreme_tolerance: m.extreme_tolerance,
                tolerance,
                ..SequentialSettings::default()
            }),
            prediction_set_coverage: (m.prediction_set_coverage > 0.0)
                .then_some(m.prediction_set_coverage),
            prediction_set_regularization: Regularization {
                penalty: m.prediction_set_penalty.max(0.0),
                free_ranks: m.prediction_set_free_ranks,
            },
            prediction_set_temperature: m.prediction_set_temperature,
        })
    }
}
