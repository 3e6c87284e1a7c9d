//! `[log]`: where and how durably predictions and labels are logged.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Durability;
use super::upload::UploadConfig;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub enabled: bool,
    pub dir: String,
    pub durability: String,
    pub fsync_interval_ms: u64,
    pub queue_capacity: usize,
    pub rotate_rows: usize,
    pub rotate_bytes: u64,
    pub rotate_seconds: f64,
    pub row_group_rows: usize,
    pub retention_hours: f64,
    pub max_disk_bytes: u64,
    pub upload_url: String,
    pub upload_keep_local: bool,
    pub upload_max_backlog_files: usize,
    pub upload_timeout_seconds: f64,
    pub upload_retry_max_seconds: f64,
    pub upload_drain_seconds: f64,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            enabled: true,
            dir: "runs/log".into(),
            durability: "interval".into(),
            fsync_interval_ms: 1000,
            queue_capacity: 65_536,
            rotate_rows: 1_000_000,
            rotate_bytes: 128 * 1024 * 1024,
            rotate_seconds: 60.0,
            row_group_rows: 65_536,
            retention_hours: 0.0,
            max_disk_bytes: 0,
            upload_url: String::new(),
            upload_keep_local: false,
            upload_max_backlog_files: 100,
            upload_timeout_seconds: 60.0,
            upload_retry_max_seconds: 60.0,
            upload_drain_seconds: 30.0,
        }
    }
}

/// The log's settings (the `[log]` config section, validated).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub fsync_interval: Duration,
    pub queue_capacity: usize,
    pub rotate_rows: usize,
    pub rotate_bytes: usize,
    pub rotate_age: Duration,
    pub row_group_rows: usize,
    pub retention: Option<Duration>,
    pub max_disk_bytes: Option<u64>,
    /// Where completed files are shipped (`log.upload_url`); `None`: they stay local.
    pub upload: Option<UploadConfig>,
}

impl RawLog {
    /// `None` when `log.enabled` is false.
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> Option<LogConfig> {
        let durability = Durability::parse(&self.durability);
        if durability.is_none() {
            bad(
                "log.durability",
                format!(
                    "`{}` is not one of `strict`, `interval`, `none`",
                    self.durability
                ),
            );
        }
        if self.enabled && self.dir.is_empty() {
            bad(
                "log.dir",
                "must name a folder (or set log.enabled = false)".into(),
            );
        }
        for (key, v) in [
            ("log.queue_capacity", self.queue_capacity as u64),
            ("log.rotate_rows", self.rotate_rows as u64),
            ("log.rotate_bytes", self.rotate_bytes),
            ("log.row_group_rows", self.row_group_rows as u64),
            ("log.fsync_interval_ms", self.fsync_interval_ms),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [
            ("log.rotate_seconds", self.rotate_seconds),
            ("log.retention_hours", self.retention_hours),
            ("log.upload_drain_seconds", self.upload_drain_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bad(key, "must be a non-negative number".into());
            }
        }
        if self.rotate_seconds == 0.0 {
            bad("log.rotate_seconds", "must be above 0".into());
        }
        for (key, v) in [
            ("log.upload_timeout_seconds", self.upload_timeout_seconds),
            (
                "log.upload_retry_max_seconds",
                self.upload_retry_max_seconds,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                bad(
                    key,
                    "must be a number of seconds above 0 and at most 86400".into(),
                );
            }
        }
        if self.upload_drain_seconds > 86_400.0 {
            bad("log.upload_drain_seconds", "must be at most 86400".into());
        }
        if self.upload_max_backlog_files == 0 {
            bad("log.upload_max_backlog_files", "must be at least 1".into());
        }
        let seconds = |v: f64| {
            Duration::from_secs_f64(if v.is_finite() {
                v.clamp(0.0, 1e12)
            } else {
                0.0
            })
        };
        let upload = if self.upload_url.is_empty() {
            None
        } else {
            match UploadConfig::parse_url(&self.upload_url) {
                Ok(url) => Some(UploadConfig {
                    url,
                    keep_local: self.upload_keep_local,
                    max_backlog_files: self.upload_max_backlog_files.max(1),
                    timeout: seconds(self.upload_timeout_seconds.min(86_400.0)),
                    retry_max: seconds(self.upload_retry_max_seconds.min(86_400.0)),
                    drain: seconds(self.upload_drain_seconds.min(86_400.0)),
                }),
                Err(e) => {
                    bad("log.upload_url", e);
                    None
                }
            }
        };
        self.enabled.then(|| LogConfig {
            dir: PathBuf::from(&self.dir),
            durability: durability.unwrap_or(Durability::Interval),
            fsync_interval: Duration::from_millis(self.fsync_interval_ms),
            queue_capacity: self.queue_capacity,
            rotate_rows: self.rotate_rows,
            rotate_bytes: usize::try_from(self.rotate_bytes).unwrap_or(usize::MAX),
            rotate_age: seconds(self.rotate_seconds),
            row_group_rows: self.row_group_rows,
            retention: (self.retention_hours > 0.0).then(|| seconds(self.retention_hours * 3600.0)),
            max_disk_bytes: (self.max_disk_bytes > 0).then_some(self.max_disk_bytes),
            upload,
        })
    }
}
