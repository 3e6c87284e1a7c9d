//! The candidate store: a bounded pool of candidates with their image bytes on disk.
//!
//! The request path calls [`Candidates::admits`], which decides cheaply (one atomic load, a
//! coin flip) whether the prediction could enter the pool (its score must beat the lowest stored
//! once the pool is full by count or by `max_disk_bytes`), and [`Candidates::offer`], which
//! hands it to the store's thread through a bounded queue (full: skipped and counted). The
//! thread writes the image file, adds the entry, and evicts: the lowest-scored candidate when
//! the pool is over `pool_size`, the random-sample member of lowest priority over `random_max`,
//! anything older than the retention, and the lowest-scored ones while the files exceed
//! `max_disk_bytes`.
//!
//! The random sample is a weighted reservoir (Efraimidis and Spirakis' A-Res, with the weights
//! growing exponentially in time as in Cormode et al.'s forward decay): a prediction drawn at
//! rate `random_rate` gets the priority `ln(w) - ln(-ln u)`, u uniform in (0, 1) and
//! `w = 2^(t / half-life)`, and the sample is the `random_max` highest priorities seen. Without
//! a half-life it is a uniform sample of all traffic the store has seen; with one, a
//! prediction's chance halves with every half-life of age. Once the sample is full a newcomer
//! must beat its lowest priority, so images are written a few times an hour, not at the
//! traffic's rate (the sample used to keep the latest `random_max`: at 15,000 requests/s that
//! was the last 0.7 s of traffic, written and deleted at 150 files/s).
//!
//! The index (`index.json`) is rewritten when it changed, at most every few seconds, and at
//! shutdown; at start files that the index does not know are deleted and entries whose file is
//! gone are dropped.
//!
//! The index is read back like input: an entry whose `file` is not a name this store makes
//! (32 hex digits and a known extension: no separator, no `..`, nothing absolute), or whose
//! fields are out of range, is refused and counted, so nothing outside `images/` is ever read,
//! exported or deleted. A start deletes only what it can account for: files with this store's
//! names that a readable index does not list. When the index cannot be read at all it is set
//! aside (`index.json.corrupt-<time>`) and the images it covered are moved to `unindexed/`
//! rather than deleted. The folder is locked (`.shiftwatch.lock`) like the log's, so a second
//! process on it fails to start instead of deleting the first one's images.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::CandidatesConfig;
use super::export::ExportItem;
use super::select::{Candidate, SelectionConfig, Signals, reasons, score};
use crate::stats::random::{GOLDEN_GAMMA, mix};

/// Metrics the store keeps.
#[derive(Clone)]
pub struct CandidateMetrics {
    pub stored: IntGauge,
    pub stored_bytes: IntGauge,
    pub exported: IntCounter,
    pub evicted: IntCounterVec,
    pub skipped: IntCounter,
    pub index_rejected: IntCounter,
}

/// A prediction offered to the store.
#[derive(Debug, Clone)]
pub struct Offer {
    pub candidate: Candidate,
    pub image: Bytes,
    /// The image bytes' SHA-256 (hex), computed once on the request path for the log.
    pub sha256: String,
    /// A random-sample member's draw ([`Admit::Random`]).
    pub sample_noise: Option<f64>,
    pub content_type: Option<String>,
    pub predicted_label: String,
    pub model_version: String,
}

/// One stored candidate (as in the index): the candidate and what the store knows of its image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCandidate {
    #[serde(flatten)]
    pub candidate: Candidate,
    pub predicted_label: String,
    pub score: f64,
    pub content_type: Option<String>,
    pub sha256: String,
    pub bytes: u64,
    pub file: String,
    pub stored_at_us: i64,
    pub model_version: String,
    /// A random-sample member's draw, `−ln(−ln u)` ([`sample_noise`]); its priority is
    /// computed from it and the prediction's time under the half-life in force, so a changed
    /// half-life re-weighs the sample instead of freezing it. Absent in indexes written before
    /// the reservoir: those members go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_noise: Option<f64>,
}

impl StoredCandidate {
    /// Its random-sample priority (−∞ without a draw).
    fn sample_key(&self, half_life: Option<Duration>) -> f64 {
        self.sample_noise.map_or(f64::NEG_INFINITY, |noise| {
            sample_key(self.candidate.ts_us, noise, half_life)
        })
    }
}

/// Why a prediction may keep its image ([`Candidates::admits`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    /// It enters the random sample with this draw ([`sample_noise`]).
    Random { noise: f64 },
    /// Its score beats the pool's floor.
    Candidate,
}

/// A random-sample member's draw: `−ln(−ln u)` (a standard Gumbel variable) for `u` in
/// (0, 1).
pub fn sample_noise(u: f64) -> f64 {
    -(-u.ln()).ln()
}

/// A random-sample priority (A-Res with forward decay): `t_us · ln 2 / half_life + noise`, the
/// noise from [`sample_noise`]. The highest `k` priorities of a stream are a weighted sample
/// without replacement of `k` items, each weighing `2^(t / half_life)` (the logarithm of A-Res's
/// `u^(1/w)`, negated twice); without a half-life, a uniform sample.
pub fn sample_key(t_us: i64, noise: f64, half_life: Option<Duration>) -> f64 {
    let growth = half_life.map_or(0.0, |h| {
        t_us as f64 * std::f64::consts::LN_2 / (h.as_secs_f64() * 1e6)
    });
    growth + noise
}

impl StoredCandidate {
    /// This candidate as an export package item, scored and explained under `cfg`.
    pub fn export_item(&self, image: Vec<u8>, cfg: &SelectionConfig) -> ExportItem {
        let c = &self.candidate;
        ExportItem {
            request_id: c.request_id.clone(),
            image,
            content_type: self.content_type.clone(),
            sha256: self.sha256.clone(),
            score: score(c, cfg),
            reasons: reasons(c, cfg),
            predicted_class: c.predicted_class,
            predicted_label: self.predicted_label.clone(),
            confidence: c.confidence,
            margin: c.margin,
            entropy: c.entropy,
            model_version: self.model_version.clone(),
            propagated: None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    candidates: Vec<StoredCandidate>,
}

struct Pool {
    entries: HashMap<String, StoredCandidate>,
    bytes: u64,
    dirty: bool,
}

/// The store: what the request path and the API hold.
pub struct Candidates {
    config: CandidatesConfig,
    pool: Arc<Mutex<Pool>>,
    /// Score a new candidate must beat when the pool is full (f64 bits).
    admission: Arc<AtomicU64>,
    /// Priority a new random-sample member must beat when the sample is full (f64 bits).
    random_floor: Arc<AtomicU64>,
    coin: AtomicU64,
    sender: Sender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: CandidateMetrics,
    /// Held while the store is open: one process per folder.
    _lock: fs::File,
}

impl std::fmt::Debug for Candidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidates")
            .field("dir", &self.config.dir)
            .finish()
    }
}

enum Message {
    Offer(Box<Offer>),
    Shutdown,
}

fn lock(p: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The file name a request's image is stored under (no part of the id reaches the path).
fn file_name(request_id: &str, content_type: Option<&str>) -> String {
    let ext = match content_type.unwrap_or_default() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "image/bmp" | "image/x-ms-bmp" => "bmp",
        "image/tiff" => "tif",
        _ => "bin",
    };
    let h = hex::encode(Sha256::digest(request_id.as_bytes()));
    format!("{}.{ext}", &h[..32])
}

impl Candidates {
    /// Opens the store (loading its index, cleaning orphans) and starts its thread.
    pub fn open(config: CandidatesConfig, metrics: CandidateMetrics) -> std::io::Result<Self> {
        let images = config.dir.join("images");
        fs::create_dir_all(&images)?;
        let folder_lock = lock_folder(&config.dir)?;
        let mut entries = HashMap::new();
        let mut bytes = 0;
        let index_path = config.dir.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(text) => match serde_json::from_slice::<Index>(&text) {
                Ok(index) => Some(index),
                Err(e) => {
                    metrics.index_rejected.inc();
                    let aside = config
                        .dir
                        .join(format!("index.json.corrupt-{}", crate::time::now_us()));
                    tracing::warn!(error = %e, path = %index_path.display(), aside = %aside.display(),
                        "the candidate index cannot be read: set aside, its images kept in unindexed/");
                    fs::rename(&index_path, &aside)?;
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Index::default()),
            Err(e) => return Err(e),
        };
        if let Some(index) = &index {
            for c in &index.candidates {
                if let Err(why) = check_entry(c) {
                    metrics.index_rejected.inc();
                    tracing::warn!(request_id = %c.candidate.request_id.chars().take(128).collect::<String>(),
                        problem = why, "candidate index entry refused");
                    continue;
                }
                if images.join(&c.file).is_file() {
                    bytes += c.bytes;
                    entries.insert(c.candidate.request_id.clone(), c.clone());
                }
            }
        }
        // Files of this store's naming that a readable index does not know (a crash between
        // write and index) go; with no readable index they are moved aside, not deleted. Files
        // of other names are not ours: left alone.
        let known: std::collections::HashSet<String> =
            entries.values().map(|c| c.file.clone()).collect();
        for e in fs::read_dir(&images)?.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            if known.contains(&name) || !is_store_file_name(&name) {
                continue;
            }
            if index.is_some() {
                let _ = fs::remove_file(e.path());
            } else {
                let unindexed = config.dir.join("unindexed");
                fs::create_dir_all(&unindexed)?;
                fs::rename(e.path(), unindexed.join(&name))?;
            }
        }
        metrics.stored.set(entries.len() as i64);
        metrics.stored_bytes.set(bytes as i64);
        let pool = Arc::new(Mutex::new(Pool {
            entries,
            bytes,
            dirty: true,
        }));
        let admission = Arc::new(AtomicU64::new(f64::NEG_INFINITY.to_bits()));
        let random_floor = Arc::new(AtomicU64::new(f64::NEG_INFINITY.to_bits()));
        let (sender, receiver) = crossbeam_channel::bounded(256);
        let worker = Worker {
            config: config.clone(),
            pool: Arc::clone(&pool),
            admission: Arc::clone(&admission),
            random_floor: Arc::clone(&random_floor),
            metrics: metrics.clone(),
            last_index: Instant::now(),
        };
        worker.update_admission(&lock(&pool));
        let thread = std::thread::Builder::new()
            .name("candidates".into())
            .spawn(move || worker.run(receiver))?;
        Ok(Candidates {
            config,
            pool,
            admission,
            random_floor,
            coin: AtomicU64::new(0x5EED),
            sender,
            thread: Mutex::new(Some(thread)),
            metrics,
            _lock: folder_lock,
        })
    }

    pub fn config(&self) -> &CandidatesConfig {
        &self.config
    }

    pub fn metrics(&self) -> &CandidateMetrics {
        &self.metrics
    }

    /// A uniform draw strictly inside (0, 1) (lock-free SplitMix64; 52 bits, so that the
    /// half added keeps it below 1 exactly).
    fn uniform(&self) -> f64 {
        let state = self
            .coin
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        ((mix(state) >> 12) as f64 + 0.5) / (1u64 << 52) as f64
    }

    /// Whether a prediction is worth its image bytes: drawn at `random_rate` and of a priority
    /// above the random sample's floor ([`Admit::Random`]), or scored above the pool's floor
    /// ([`Admit::Candidate`]).
    /// `ts_us`: the prediction's time (its candidate's `ts_us`).
    pub fn admits(&self, signals: &Signals, ts_us: i64) -> Option<Admit> {
        if self.config.random_rate > 0.0 && self.uniform() <= self.config.random_rate {
            let noise = sample_noise(self.uniform());
            let key = sample_key(ts_us, noise, self.config.random_half_life);
            if key > f64::from_bits(self.random_floor.load(Ordering::Relaxed)) {
                return Some(Admit::Random { noise });
            }
        }
        (signals.score(&self.config.selection)
            > f64::from_bits(self.admission.load(Ordering::Relaxed)))
        .then_some(Admit::Candidate)
    }

    /// Hands a prediction to the store's thread (never blocks).
    pub fn offer(&self, offer: Offer) {
        match self.sender.try_send(Message::Offer(Box::new(offer))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.skipped.inc()
            }
        }
    }

    /// Every stored candidate.
    pub fn list(&self) -> Vec<StoredCandidate> {
        lock(&self.pool).entries.values().cloned().collect()
    }

    /// The image bytes of a stored candidate.
    pub fn image(&self, c: &StoredCandidate) -> std::io::Result<Vec<u8>> {
        fs::read(self.config.dir.join("images").join(&c.file))
    }

    /// Stops the thread after it has written what is queued and the index.
    pub fn close(&self) {
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = self.sender.send(Message::Shutdown);
            let _ = t.join();
        }
    }
}

impl Drop for Candidates {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads a store's index without opening it (offline export). Entries that fail the checks
/// of a start are left out, each with a warning.
pub fn read_index(dir: &Path) -> std::io::Result<Vec<StoredCandidate>> {
    let text = fs::read(dir.join("index.json"))?;
    let index: Index = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
    Ok(index
        .candidates
        .into_iter()
        .filter(|c| match check_entry(c) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(problem = why, "candidate index entry left out");
                false
            }
        })
        .collect())
}

/// The extensions [`file_name`] gives.
const EXTENSIONS: [&str; 7] = ["png", "jpg", "webp", "gif", "bmp", "tif", "bin"];

/// Whether `name` is one that [`file_name`] makes: 32 lowercase hex digits, a dot, a known
/// extension. Such a name is a plain file inside `images/`, never a path.
pub fn is_store_file_name(name: &str) -> bool {
    let Some((stem, ext)) = name.split_once('.') else {
        return false;
    };
    stem.len() == 32
        && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && EXTENSIONS.contains(&ext)
}

/// Why an index entry cannot be trusted, if it cannot.
fn check_entry(c: &StoredCandidate) -> Result<(), &'static str> {
    if !is_store_file_name(&c.file) {
        return Err("its file is not a name this store makes (a path outside the store?)");
    }
    let id = &c.candidate.request_id;
    if id.is_empty() || id.len() > 256 {
        return Err("its request id is empty or too long");
    }
    if file_name(id, c.content_type.as_deref()) != c.file {
        return Err("its file does not belong to its request id");
    }
    if c.sha256.len() != 64 || !c.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("its sha256 is not 64 hex digits");
    }
    if !c.score.is_finite() {
        return Err("its score is not a finite number");
    }
    Ok(())
}

/// Takes the folder's lock file, or fails naming the folder.
fn lock_folder(dir: &Path) -> std::io::Result<fs::File> {
    let path = dir.join(".shiftwatch.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    if file.try_lock().is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "{} is in use by another shiftwatch process (its lock {} is held)",
                dir.display(),
                path.display()
            ),
        ));
    }
    Ok(file)
}

struct Worker {
    config: CandidatesConfig,
    pool: Arc<Mutex<Pool>>,
    admission: Arc<AtomicU64>,
    random_floor: Arc<AtomicU64>,
    metrics: CandidateMetrics,
    last_index: Instant,
}

const INDEX_EVERY: Duration = Duration::from_secs(2);

/// The oldest `stored_at_us` a retention keeps at `now_us`: saturating, so that a retention
/// longer than the clock's range keeps everything instead of wrapping around.
fn retention_cutoff(now_us: i64, retention: Duration) -> i64 {
    now_us.saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX))
}

impl Worker {
    fn run(mut self, receiver: Receiver<Message>) {
        loop {
            match receiver.recv_timeout(Duration::from_millis(500)) {
                Ok(Message::Offer(o)) => self.add(*o),
                Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.last_index.elapsed() >= INDEX_EVERY {
                self.expire();
                self.write_index();
            }
        }
        while let Ok(Message::Offer(o)) = receiver.try_recv() {
            self.add(*o);
        }
        self.write_index();
    }

    fn add(&mut self, offer: Offer) {
        let c = offer.candidate;
        let s = score(&c, &self.config.selection);
        let file = file_name(&c.request_id, offer.content_type.as_deref());
        let path = self.config.dir.join("images").join(&file);
        if lock(&self.pool).entries.contains_key(&c.request_id) {
            return;
        }
        if let Err(e) = fs::write(&path, &offer.image) {
            tracing::warn!(error = %e, path = %path.display(), "cannot store a candidate image");
            self.metrics.skipped.inc();
            return;
        }
        let stored = StoredCandidate {
            candidate: c,
            predicted_label: offer.predicted_label,
            score: s,
            content_type: offer.content_type,
            sha256: offer.sha256,
            bytes: offer.image.len() as u64,
            file,
            stored_at_us: crate::time::now_us(),
            model_version: offer.model_version,
            sample_noise: offer.sample_noise,
        };
        let mut pool = lock(&self.pool);
        pool.bytes += stored.bytes;
        pool.entries
            .insert(stored.candidate.request_id.clone(), stored);
        pool.dirty = true;
        self.evict(&mut pool);
        self.update_admission(&pool);
    }

    fn remove(&self, pool: &mut Pool, request_id: &str, reason: &str) {
        if let Some(c) = pool.entries.remove(request_id) {
            pool.bytes = pool.bytes.saturating_sub(c.bytes);
            let _ = fs::remove_file(self.config.dir.join("images").join(&c.file));
            self.metrics.evicted.with_label_values(&[reason]).inc();
            pool.dirty = true;
        }
    }

    /// The lowest-scored candidate (random-sample members excluded unless `random`).
    fn lowest(pool: &Pool, random: bool) -> Option<String> {
        pool.entries
            .values()
            .filter(|c| c.candidate.random == random)
            .min_by(|a, b| {
                a.score
                    .total_cmp(&b.score)
                    .then(a.stored_at_us.cmp(&b.stored_at_us))
            })
            .map(|c| c.candidate.request_id.clone())
    }

    /// The random-sample member of lowest priority (one without a draw first, the older
    /// first).
    fn last_sampled(&self, pool: &Pool) -> Option<String> {
        let half_life = self.config.random_half_life;
        pool.entries
            .values()
            .filter(|c| c.candidate.random)
            .min_by(|a, b| {
                a.sample_key(half_life)
                    .total_cmp(&b.sample_key(half_life))
                    .then(a.stored_at_us.cmp(&b.stored_at_us))
            })
            .map(|c| c.candidate.request_id.clone())
    }

    fn evict(&self, pool: &mut Pool) {
        let count = |pool: &Pool, random: bool| {
            pool.entries
                .values()
                .filter(|c| c.candidate.random == random)
                .count()
        };
        while count(pool, false) > self.config.pool_size {
            let Some(id) = Self::lowest(pool, false) else {
                break;
            };
            self.remove(pool, &id, "pool_full");
        }
        while count(pool, true) > self.config.random_max {
            let Some(id) = self.last_sampled(pool) else {
                break;
            };
            self.remove(pool, &id, "random_full");
        }
        while pool.bytes > self.config.max_disk_bytes {
            // Candidates first (lowest score), then the random sample (lowest priority).
            let id = Self::lowest(pool, false).or_else(|| self.last_sampled(pool));
            let Some(id) = id else { break };
            self.remove(pool, &id, "disk_quota");
        }
        self.metrics.stored.set(pool.entries.len() as i64);
        self.metrics.stored_bytes.set(pool.bytes as i64);
    }

    fn expire(&self) {
        let Some(retention) = self.config.retention else {
            return;
        };
        let cutoff = retention_cutoff(crate::time::now_us(), retention);
        let mut pool = lock(&self.pool);
        let old: Vec<String> = pool
            .entries
            .values()
            .filter(|c| c.stored_at_us < cutoff)
            .map(|c| c.candidate.request_id.clone())
            .collect();
        for id in old {
            self.remove(&mut pool, &id, "retention");
        }
        self.metrics.stored.set(pool.entries.len() as i64);
        self.metrics.stored_bytes.set(pool.bytes as i64);
        self.update_admission(&pool);
    }

    /// When the pool is full, a newcomer must beat its lowest score. Full is `pool_size`
    /// candidates, or files so close to `max_disk_bytes` that an image of the average size
    /// would not fit: then storing a newcomer evicts the lowest-scored candidate, which is the
    /// newcomer itself unless it beats that score (with large images the quota binds long
    /// before the count: every prediction was written to disk and deleted again at once, 60 MB/s
    /// of files for 320×240 photos at 335 requests/s).
    fn update_admission(&self, pool: &Pool) {
        let candidates = pool.entries.values().filter(|c| !c.candidate.random);
        let (n, min) =
            candidates.fold((0usize, f64::INFINITY), |(n, m), c| (n + 1, m.min(c.score)));
        // An image of the average size would no longer fit under the quota.
        let average = pool.bytes / pool.entries.len().max(1) as u64;
        let over_quota = pool.bytes + average > self.config.max_disk_bytes;
        let threshold = if n >= self.config.pool_size || (n > 0 && over_quota) {
            min
        } else {
            f64::NEG_INFINITY
        };
        self.admission.store(threshold.to_bits(), Ordering::Relaxed);
        // The random sample, once full, takes only a priority above its lowest; an empty
        // `random_max` takes none. Full is also a disk quota that binds with no candidate
        // left to evict before a member: a newcomer would evict the lowest member, itself
        // unless it beats it.
        let half_life = self.config.random_half_life;
        let (members, lowest) = pool
            .entries
            .values()
            .filter(|c| c.candidate.random)
            .fold((0usize, f64::INFINITY), |(n, m), c| {
                (n + 1, m.min(c.sample_key(half_life)))
            });
        let floor = if members >= self.config.random_max || (n == 0 && members > 0 && over_quota) {
            lowest
        } else {
            f64::NEG_INFINITY
        };
        self.random_floor.store(floor.to_bits(), Ordering::Relaxed);
    }

    fn write_index(&mut self) {
        self.last_index = Instant::now();
        let mut pool = lock(&self.pool);
        if !pool.dirty {
            return;
        }
        let mut candidates: Vec<StoredCandidate> = pool.entries.values().cloned().collect();
        candidates.sort_by(|a, b| a.candidate.request_id.cmp(&b.candidate.request_id));
        pool.dirty = false;
        drop(pool);
        let path = self.config.dir.join("index.json");
        let tmp = self.config.dir.join(".index.json.tmp");
        let result = serde_json::to_vec(&Index { candidates })
            .map_err(std::io::Error::other)
            .and_then(|bytes| fs::write(&tmp, bytes))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %path.display(), "cannot write the candidate index");
            lock(&self.pool).dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;
    use crate::relabel::RawCandidates;
    use crate::stats::random::SplitMix64;

    fn metrics() -> CandidateMetrics {
        let gauge = |name: &str| IntGauge::new(name, "test").unwrap();
        CandidateMetrics {
            stored: gauge("stored"),
            stored_bytes: gauge("stored_bytes"),
            exported: IntCounter::new("exported", "test").unwrap(),
            evicted: IntCounterVec::new(Opts::new("evicted", "test"), &["reason"]).unwrap(),
            skipped: IntCounter::new("skipped", "test").unwrap(),
            index_rejected: IntCounter::new("index_rejected", "test").unwrap(),
        }
    }

    fn offer(request_id: &str, sample_noise: f64) -> Offer {
        Offer {
            candidate: Candidate {
                request_id: request_id.into(),
                predicted_class: 0,
                confidence: 0.9,
                margin: 0.8,
                entropy: 0.1,
                dhash: 0,
                vector: vec![0.0; 2],
                ood: false,
                ood_score: 0.0,
                shifted: false,
                random: true,
                ts_us: 0,
            },
            image: Bytes::from_static(b"not an image"),
            sha256: "0".repeat(64),
            sample_noise: Some(sample_noise),
            content_type: Some("image/png".into()),
            predicted_label: "0".into(),
            model_version: "1".into(),
        }
    }

    /// The random sample used to keep the latest `random_max` draws: the last moments of
    /// traffic, written and deleted at the traffic's rate. It is now a uniform sample of
    /// everything the store has seen (no half-life), and once full it takes a newcomer only when
    /// its priority beats the lowest.
    #[test]
    fn the_random_sample_is_uniform_over_all_traffic_and_seldom_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), 50, 0.0, 100 * 1024 * 1024);
        let n = 2000usize;
        let written = draw(&store, n, "r", 0) as u64;
        store.close();
        let kept: Vec<usize> = store
            .list()
            .iter()
            .filter(|c| c.candidate.random)
            .map(|c| c.candidate.request_id[1..].parse().unwrap())
            .collect();
        assert_eq!(kept.len(), 50);
        let on_disk = fs::read_dir(dir.path().join("images")).unwrap().count();
        assert_eq!(on_disk, 50, "only the sample's files remain");
        // Uniform over 0..2000: mean 999.5, standard error 577 / √50 = 82. The latest 50 (the
        // old rule) average 1975.
        let mean = kept.iter().sum::<usize>() as f64 / kept.len() as f64;
        println!("{written} of {n} draws written; the sample's mean position {mean}");
        assert!((700.0..=1300.0).contains(&mean), "mean position {mean}");
        // 50 to fill it, then about 50 · ln(2000 / 50) = 184 more (each draw beats the 50th
        // highest of those before it with chance 50 / its position); the old rule wrote all 2000.
        assert!(written < 400, "{written} images written for a sample of 50");
        assert_eq!(
            store
                .metrics()
                .evicted
                .with_label_values(&["random_full"])
                .get(),
            written - 50
        );
    }

    fn open_store(dir: &Path, random_max: usize, half_life_hours: f64, quota: u64) -> Candidates {
        let config = RawCandidates {
            dir: dir.display().to_string(),
            export_dir: dir.join("exports").display().to_string(),
            random_rate: 1.0,
            random_max,
            random_half_life_hours: half_life_hours,
            max_disk_bytes: quota,
            ..RawCandidates::default()
        }
        .validate(&mut |key, e| panic!("{key}: {e}"))
        .unwrap();
        Candidates::open(config, metrics()).unwrap()
    }

    const SIGNALS: Signals = Signals {
        confidence: 0.9,
        margin: 0.8,
        entropy: 0.1,
        ood: false,
        ood_score: 0.0,
        shifted: false,
    };

    /// Offers `n` draws stamped `ts_us`, letting the store's thread keep up; how many were
    /// admitted.
    fn draw(store: &Candidates, n: usize, prefix: &str, ts_us: i64) -> usize {
        let mut written = 0;
        for i in 0..n {
            if let Some(Admit::Random { noise }) = store.admits(&SIGNALS, ts_us) {
                written += 1;
                let mut o = offer(&format!("{prefix}{i}"), noise);
                o.candidate.ts_us = ts_us;
                store.offer(o);
            }
            while !store.sender.is_empty() {
                std::thread::yield_now();
            }
        }
        written
    }

    /// Priorities are computed under the half-life in force: a sample kept under a 24-hour
    /// half-life still takes newcomers after a restart without one (stored priorities on the
    /// 24-hour scale, about 14,000 today, would have frozen it against newcomers near 0).
    #[test]
    fn a_changed_half_life_reweighs_the_sample_instead_of_freezing_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::time::now_us();
        let store = open_store(dir.path(), 20, 24.0, 1 << 30);
        draw(&store, 200, "a", now);
        store.close();
        drop(store);
        let store = open_store(dir.path(), 20, 0.0, 1 << 30);
        let written = draw(&store, 200, "b", now);
        store.close();
        let kept = store.list().iter().filter(|c| c.candidate.random).count();
        println!("{written} of 200 new draws admitted");
        assert_eq!(kept, 20);
        // Each new draw beats the 20th highest of the 400 so far with chance about 20 / its
        // position: about 20 · ln 2 = 14 of the 200.
        assert!(written >= 4, "{written} admitted: the sample froze");
    }

    /// A disk quota that holds fewer members than `random_max`, with no candidate to evict
    /// first, also sets the sample's floor: draws are not written only to be evicted.
    #[test]
    fn a_quota_smaller_than_the_sample_sets_its_floor() {
        let dir = tempfile::tempdir().unwrap();
        let image = offer("x", 0.0).image.len() as u64;
        let store = open_store(dir.path(), 50, 0.0, image * 5);
        let written = draw(&store, 500, "q", 0);
        store.close();
        let kept = store.list().iter().filter(|c| c.candidate.random).count();
        println!("{written} of 500 draws written, {kept} kept");
        assert_eq!(kept, 5);
        // 5 to fill it, then about 5 · ln(500 / 5) = 23 more; without the floor, all 500.
        assert!(written < 80, "{written} written for a quota of five");
    }

    #[test]
    fn a_retention_beyond_the_clock_keeps_everything() {
        let now = crate::time::now_us();
        assert_eq!(
            retention_cutoff(now, Duration::from_secs(60)),
            now - 60_000_000
        );
        let forever = Duration::from_secs_f64(3e9 * 3600.0);
        assert_eq!(retention_cutoff(now, forever), now.saturating_sub(i64::MAX));
        assert!(retention_cutoff(now, forever) < 0);
        assert_eq!(retention_cutoff(i64::MIN + 5, Duration::MAX), i64::MIN);
    }

    /// With a half-life, each half-life's predictions weigh twice those of the one before:
    /// the sample holds about twice as many of them. Without, each stretch of time holds its
    /// share.
    #[test]
    fn a_half_life_makes_each_half_life_weigh_twice_the_one_before() {
        let half_life = Duration::from_secs(3600);
        let (n, k, spans) = (200_000usize, 1000usize, 8usize);
        let counts = |half_life: Option<Duration>| {
            let mut rng = SplitMix64::new(7);
            let mut keyed: Vec<(f64, usize)> = (0..n)
                .map(|i| {
                    let t_us = (i as f64 / n as f64 * spans as f64 * 3600e6) as i64;
                    let u = rng.unit().max(f64::MIN_POSITIVE);
                    (sample_key(t_us, sample_noise(u), half_life), i * spans / n)
                })
                .collect();
            keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut counts = vec![0usize; spans];
            for (_, span) in &keyed[..k] {
                counts[*span] += 1;
            }
            counts
        };
        let decayed = counts(Some(half_life));
        println!("per half-life, oldest first: {decayed:?}");
        // Weights 2^(t / h) over 8 half-lives: the last holds (2^8 − 2^7) / (2^8 − 1) = 50.2%
        // of the weight, the one before 25.1%.
        let (last, before) = (decayed[spans - 1] as f64, decayed[spans - 2] as f64);
        assert!((430.0..=570.0).contains(&last), "{decayed:?}");
        assert!((1.6..=2.5).contains(&(last / before)), "{decayed:?}");
        let uniform = counts(None);
        println!("without a half-life: {uniform:?}");
        // 125 expected in each; a binomial's standard deviation is about 10.5.
        assert!(
            uniform.iter().all(|c| (85..=165).contains(c)),
            "{uniform:?}"
        );
    }
}
