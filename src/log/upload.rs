//! Log shipping: completed Parquet files copied to object storage (`log.upload_url`) under the
//! same Hive keys, off the request path and off the writers' threads.
//!
//! Rules:
//! - Only complete files are shipped: `<uuid>.parquet` under a stream's folder, never the
//!   `.<uuid>.parquet` being written, the write-ahead log or `quarantine/`.
//! - A file goes to one key, `<url prefix>/<its path under log.dir>`, in one atomic put (a
//!   multipart upload above [`MULTIPART_BYTES`], visible only once completed): the store never
//!   shows a partial object, and nothing is written under a temporary name. A file's name is its
//!   uuid and its rows never change (recovery rewrites a segment only under the segment's own
//!   uuid), so putting it again after a crash overwrites the object with the same rows: a
//!   restart never leaves two copies.
//! - The local file is removed (or, with `log.upload_keep_local`, listed in the journal
//!   `.uploaded`) only once the store has confirmed the put and holds an object of the file's
//!   size. A crash before that uploads it again at the next start.
//! - Failures are counted and retried, the store's errors with one backoff for all files
//!   (1 s doubling up to `log.upload_retry_max_seconds`), a file that cannot be read with its
//!   own. The backlog (files, bytes, the oldest one's age) is exported per stream; past
//!   `log.upload_max_backlog_files` the log is degraded (`/readyz`).
//! - One thread with its own single-threaded runtime does all of it; the writers and the request
//!   path never wait for it. At shutdown, once every writer has completed its files, it uploads
//!   what waits for at most `log.upload_drain_seconds`; the rest goes at the next start.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use object_store::path::{Path as Key, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart};
use tokio::sync::watch;
use url::Url;

use super::retention::partition_end;
use super::sink::{DirLock, LogHealth};
use crate::metrics::{LogMetrics, UploadFailure};

/// Files above this size go up in parts (bounded memory); smaller ones in one put.
pub const MULTIPART_BYTES: u64 = 32 * 1024 * 1024;
/// How often the stream folders are looked at for completed files.
const SCAN_EVERY: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_secs(1);
/// The journal of files uploaded but kept (`log.upload_keep_local`), under `log.dir`.
const JOURNAL: &str = ".uploaded";
/// Empty partition folders are removed once the partition ended this long ago.
const EMPTY_PARTITION_GRACE_SECONDS: i64 = 3600;
/// The health part the backlog sets.
const HEALTH_PART: &str = "upload";

/// Where and how completed files are shipped (`log.upload_*`, validated).
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub url: Url,
    pub keep_local: bool,
    pub max_backlog_files: usize,
    pub timeout: Duration,
    pub retry_max: Duration,
    pub drain: Duration,
}

impl UploadConfig {
    /// Checks `log.upload_url`: a scheme this build can write to, a bucket where one is needed,
    /// a store that can be set up from it and the environment (no request is made).
    pub fn parse_url(raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| {
            format!(
                "`{raw}` is not a URL ({e}): use s3://bucket/prefix, gs://…, az://… or file:///…"
            )
        })?;
        open_store(&url, Duration::from_secs(60))?;
        Ok(url)
    }
}

/// The store and the key prefix that `url` names, with each cloud store's settings
/// (credentials, region, endpoint) from its standard environment variables.
pub fn open_store(url: &Url, timeout: Duration) -> Result<(Arc<dyn ObjectStore>, Key), String> {
    let (scheme, prefix) = ObjectStoreScheme::parse(url).map_err(|_| {
        format!(
            "`{url}`: unknown scheme `{}` (use s3://, gs://, az:// or file://)",
            url.scheme()
        )
    })?;
    let built = |r: object_store::Result<Arc<dyn ObjectStore>>| {
        r.map_err(|e| format!("`{url}`: the store cannot be set up: {e}"))
    };
    #[cfg(feature = "cloud")]
    let retry = object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: timeout,
        ..Default::default()
    };
    #[cfg(not(feature = "cloud"))]
    let _ = timeout;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            if url.to_file_path().is_err() {
                return Err(format!("`{url}`: a file URL needs an absolute path"));
            }
            let store = object_store::local::LocalFileSystem::new().with_automatic_cleanup(true);
            built(Ok(Arc::new(store)))?
        }
        #[cfg(feature = "s3")]
        ObjectStoreScheme::AmazonS3 => {
            install_tls_provider();
            built(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            )?
        }
        #[cfg(feature = "gcs")]
        ObjectStoreScheme::GoogleCloudStorage => {
            install_tls_provider();
            built(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            )?
        }
        #[cfg(feature = "azure")]
        ObjectStoreScheme::MicrosoftAzure => {
            install_tls_provider();
            built(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            )?
        }
        #[cfg(not(feature = "s3"))]
        ObjectStoreScheme::AmazonS3 => return Err(built_without(url, "s3")),
        #[cfg(not(feature = "gcs"))]
        ObjectStoreScheme::GoogleCloudStorage => return Err(built_without(url, "gcs")),
        #[cfg(not(feature = "azure"))]
        ObjectStoreScheme::MicrosoftAzure => return Err(built_without(url, "azure")),
        _ => {
            return Err(format!(
                "`{url}`: the log ships to s3://, gs://, az:// or file:// URLs only"
            ));
        }
    };
    Ok((store, prefix))
}

#[cfg(not(all(feature = "s3", feature = "gcs", feature = "azure")))]
fn built_without(url: &Url, feature: &str) -> String {
    format!(
        "`{url}`: this shiftwatch was built without the `{feature}` feature (cargo build --features {feature})"
    )
}

/// rustls's process-wide crypto provider (ring), which the cloud stores' HTTP client needs.
#[cfg(feature = "cloud")]
fn install_tls_provider() {
    // ring rather than aws-lc-rs keeps the build small (README "Log shipping"); it lacks only
    // the post-quantum key exchanges, which rustls marks by deprecating this constructor. An
    // error means a provider is installed already: nothing to do.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A stream whose folder is shipped: its completed files and its metrics.
#[derive(Clone)]
struct Shipped {
    name: &'static str,
    /// Its folder under the log dir.
    root: PathBuf,
    metrics: LogMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Run,
    /// Upload what waits, then stop.
    Drain,
}

/// The uploader: its thread, the streams it ships, and the switch that stops it.
pub struct Uploader {
    streams: Arc<Mutex<Vec<Shipped>>>,
    phase: watch::Sender<Phase>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader").finish()
    }
}

impl Uploader {
    /// Starts the uploader of `dir`. Never fails: a store that cannot be set up now leaves
    /// every file local and says so through `health`.
    pub fn start(
        dir: &Path,
        config: UploadConfig,
        health: Arc<LogHealth>,
        lock: Arc<DirLock>,
    ) -> Self {
        let streams: Arc<Mutex<Vec<Shipped>>> = Arc::default();
        let (phase, phase_rx) = watch::channel(Phase::Run);
        let shipper = match open_store(&config.url, config.timeout) {
            Ok((store, prefix)) => Some(Shipper::new(
                dir,
                store,
                prefix,
                config,
                Arc::clone(&health),
                lock,
                Arc::clone(&streams),
            )),
            Err(e) => {
                tracing::error!(error = %e, "log shipping cannot start; Parquet files stay local");
                health.set(HEALTH_PART, Some(format!("log shipping: {e}")));
                None
            }
        };
        let thread = shipper.map(|shipper| {
            std::thread::Builder::new()
                .name("log-upload".into())
                .spawn(move || shipper.run(phase_rx))
                .expect("spawning the log uploader")
        });
        Uploader {
            streams,
            phase,
            thread: Mutex::new(thread),
        }
    }

    /// Ships the completed files under `root` (relative to the log dir), counted in `metrics`.
    /// A root already shipped is not added twice (its files would be listed twice).
    pub fn add_stream(&self, name: &'static str, root: &Path, metrics: &LogMetrics) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams.iter().any(|s| s.root == root) {
            return;
        }
        streams.push(Shipped {
            name,
            root: root.to_path_buf(),
            metrics: metrics.clone(),
        });
    }

    /// Uploads what waits (at most `log.upload_drain_seconds`) and stops. Call it once every
    /// writer has completed its files.
    pub fn close(&self) {
        let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let _ = self.phase.send(Phase::Drain);
        if thread.join().is_err() {
            tracing::error!("the log uploader panicked");
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.close();
    }
}

/// A completed file waiting for its upload.
#[derive(Debug, Clone)]
struct Waiting {
    stream: usize,
    /// Its path under the log dir (also its key under the prefix).
    rel: PathBuf,
    len: u64,
}

/// What one file's upload ended in.
enum Outcome {
    /// Confirmed by the store, removed or journaled locally.
    Uploaded,
    /// The file went before it could be read (retention): nothing to upload.
    Gone,
}

struct Failure {
    reason: UploadFailure,
    detail: String,
}

/// The uploader's thread state.
struct Shipper {
    dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    config: UploadConfig,
    health: Arc<LogHealth>,
    lock: Arc<DirLock>,
    streams: Arc<Mutex<Vec<Shipped>>>,
    journal: Option<Journal>,
    /// While the store fails: when to try again, and the next pause.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Files that could not be read: when to try each again, and its next pause.
    unreadable: HashMap<PathBuf, (Instant, Duration)>,
    /// The last store error (for the health message), `None` while uploads work.
    last_error: Option<String>,
}

impl Shipper {
    fn new(
        dir: &Path,
        store: Arc<dyn ObjectStore>,
        prefix: Key,
        config: UploadConfig,
        health: Arc<LogHealth>,
        lock: Arc<DirLock>,
        streams: Arc<Mutex<Vec<Shipped>>>,
    ) -> Self {
        let journal = config.keep_local.then(|| Journal::load(dir));
        Shipper {
            dir: dir.to_path_buf(),
            store,
            prefix,
            config,
            health,
            lock,
            streams,
            journal,
            retry_at: None,
            backoff: RETRY_MIN,
            unreadable: HashMap::new(),
            last_error: None,
        }
    }

    fn run(mut self, mut phase: watch::Receiver<Phase>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the log uploader cannot start its runtime; Parquet files stay local");
                self.health
                    .set(HEALTH_PART, Some(format!("log shipping cannot start: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            let mut drain_until: Option<Instant> = None;
            loop {
                if drain_until.is_none() && *phase.borrow() == Phase::Drain {
                    drain_until = Some(Instant::now() + self.config.drain);
                }
                let shipped = self.pass(drain_until).await;
                let waiting = self.backlog_total();
                if let Some(until) = drain_until {
                    if waiting == 0 {
                        break;
                    }
                    if Instant::now() >= until {
                        tracing::warn!(
                            files = waiting,
                            "shutting down with log files not yet uploaded; they are uploaded at the next start"
                        );
                        break;
                    }
                }
                if shipped > 0 {
                    continue; // more may have completed meanwhile
                }
                let mut next = Instant::now() + SCAN_EVERY;
                if let Some(at) = self.retry_at {
                    next = next.max(at);
                }
                if let Some(until) = drain_until {
                    next = next.min(until);
                }
                let sleep = tokio::time::sleep_until(next.into());
                if drain_until.is_some() {
                    sleep.await;
                } else {
                    tokio::select! {
                        () = sleep => {}
                        _ = phase.changed() => {}
                    }
                }
            }
        });
    }

    fn streams(&self) -> Vec<Shipped> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The files waiting now, oldest partition first, with the backlog metrics and health
    /// brought up to date.
    fn scan(&mut self) -> Vec<Waiting> {
        let streams = self.streams();
        let mut waiting = Vec::new();
        let mut seen = HashSet::new();
        for (i, stream) in streams.iter().enumerate() {
            let mut files = Vec::new();
            completed_files(&self.dir, &self.dir.join(&stream.root), &mut files);
            files.sort();
            let now = SystemTime::now();
            let (mut n, mut bytes, mut oldest) = (0i64, 0i64, 0f64);
            for (rel, len, modified) in files {
                if self.journal.as_ref().is_some_and(|j| j.contains(&rel)) {
                    seen.insert(rel);
                    continue;
                }
                n += 1;
                bytes = bytes.saturating_add(i64::try_from(len).unwrap_or(i64::MAX));
                let age = now
                    .duration_since(modified)
                    .unwrap_or_default()
                    .as_secs_f64();
                oldest = oldest.max(age);
                waiting.push(Waiting {
                    stream: i,
                    rel,
                    len,
                });
            }
            let m = &stream.metrics;
            m.upload_backlog_files
                .with_label_values(&[stream.name])
                .set(n);
            m.upload_backlog_bytes
                .with_label_values(&[stream.name])
                .set(bytes);
            m.upload_backlog_age
                .with_label_values(&[stream.name])
                .set(oldest);
        }
        if let Some(journal) = &mut self.journal {
            journal.keep_only(&seen);
        }
        self.unreadable
            .retain(|rel, _| waiting.iter().any(|w| &w.rel == rel));
        self.set_health(waiting.len());
        waiting
    }

    fn backlog_total(&self) -> usize {
        self.streams()
            .iter()
            .map(|s| {
                s.metrics
                    .upload_backlog_files
                    .with_label_values(&[s.name])
                    .get()
                    .max(0) as usize
            })
            .sum()
    }

    fn set_health(&self, waiting: usize) {
        let max = self.config.max_backlog_files;
        if waiting > max {
            let cause = self
                .last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            self.health.set(
                HEALTH_PART,
                Some(format!(
                    "{waiting} log files wait for their upload to {} (more than log.upload_max_backlog_files = {max}){cause}",
                    self.config.url
                )),
            );
        } else {
            self.health.set(HEALTH_PART, None);
        }
    }

    /// One pass: scan, then upload the files waiting (oldest first) until the store fails.
    /// Returns the files shipped.
    async fn pass(&mut self, drain_until: Option<Instant>) -> usize {
        // Another process holds the folder: its own uploader ships it.
        if self.lock.ensure().is_err() {
            return 0;
        }
        let waiting = self.scan();
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return 0;
        }
        let streams = self.streams();
        let n_waiting = waiting.len();
        let mut shipped = 0;
        for file in waiting {
            if drain_until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
            if self
                .unreadable
                .get(&file.rel)
                .is_some_and(|(at, _)| Instant::now() < *at)
            {
                continue;
            }
            let Some(stream) = streams.get(file.stream) else {
                continue;
            };
            match self.ship(&file).await {
                Ok(Outcome::Uploaded) => {
                    shipped += 1;
                    stream
                        .metrics
                        .upload_files
                        .with_label_values(&[stream.name])
                        .inc();
                    stream
                        .metrics
                        .upload_bytes
                        .with_label_values(&[stream.name])
                        .inc_by(file.len);
                    self.unreadable.remove(&file.rel);
                    if self.last_error.take().is_some() {
                        tracing::info!(url = %self.config.url, "log uploads work again");
                    }
                    self.retry_at = None;
                    self.backoff = RETRY_MIN;
                }
                Ok(Outcome::Gone) => {}
                Err(failure) => {
                    stream
                        .metrics
                        .upload_failures
                        .with_label_values(&[stream.name, failure.reason.as_str()])
                        .inc();
                    if failure.reason == UploadFailure::Read {
                        let pause = self
                            .unreadable
                            .get(&file.rel)
                            .map_or(RETRY_MIN, |(_, p)| (*p * 2).min(self.config.retry_max));
                        tracing::warn!(file = %file.rel.display(), error = %failure.detail, "cannot read a log file to upload it; retried later");
                        self.unreadable
                            .insert(file.rel.clone(), (Instant::now() + pause, pause));
                        continue;
                    }
                    if self.last_error.is_none() {
                        tracing::error!(
                            url = %self.config.url,
                            file = %file.rel.display(),
                            reason = failure.reason.as_str(),
                            error = %failure.detail,
                            "log upload failed; files stay local and are retried"
                        );
                    } else {
                        tracing::debug!(file = %file.rel.display(), error = %failure.detail, "log upload failed again");
                    }
                    self.last_error = Some(failure.detail);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(self.config.retry_max);
                    break;
                }
            }
        }
        if shipped > 0 {
            // The gauges follow the drain at once, not a scan later.
            self.scan();
        } else {
            self.set_health(n_waiting);
        }
        shipped
    }

    /// The key of a file: the prefix, then its path under the log dir.
    fn key(&self, rel: &Path) -> Key {
        let parts = rel
            .components()
            .map(|c| PathPart::from(c.as_os_str().to_string_lossy().into_owned()));
        self.prefix.parts().chain(parts).collect()
    }

    /// Uploads one file, confirms it, then removes (or journals) the local copy.
    async fn ship(&mut self, file: &Waiting) -> Result<Outcome, Failure> {
        let path = self.dir.join(&file.rel);
        let key = self.key(&file.rel);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Gone),
            Err(e) => {
                return Err(Failure {
                    reason: UploadFailure::Read,
                    detail: format!("{}: {e}", path.display()),
                });
            }
        };
        let attempt = async {
            put_file(self.store.as_ref(), &key, &path, len, MULTIPART_BYTES).await?;
            let meta = self.store.head(&key).await.map_err(|e| Failure {
                reason: UploadFailure::Store,
                detail: e.to_string(),
            })?;
            if meta.size != len {
                return Err(Failure {
                    reason: UploadFailure::Mismatch,
                    detail: format!(
                        "{key}: the store holds {} bytes after the put of {len}",
                        meta.size
                    ),
                });
            }
            Ok(())
        };
        match tokio::time::timeout(self.config.timeout, attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => return Err(failure),
            Err(_) => {
                return Err(Failure {
                    reason: UploadFailure::Timeout,
                    detail: format!(
                        "{key}: no answer within log.upload_timeout_seconds ({:?})",
                        self.config.timeout
                    ),
                });
            }
        }
        tracing::debug!(file = %file.rel.display(), %key, bytes = len, "log file uploaded");
        match &mut self.journal {
            Some(journal) => journal.record(&file.rel),
            None => {
                if let Err(e) = fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove an uploaded log file; it is uploaded again later");
                }
                if let Some(parent) = file.rel.parent() {
                    remove_ended_partition(&self.dir, parent);
                }
            }
        }
        Ok(Outcome::Uploaded)
    }
}

/// Puts the file at `path` (`len` bytes) under `key`: one put, or a multipart upload read in
/// parts of `part_bytes` when larger. Either way the object appears only when complete.
async fn put_file(
    store: &dyn ObjectStore,
    key: &Key,
    path: &Path,
    len: u64,
    part_bytes: u64,
) -> Result<(), Failure> {
    let read_error = |e: std::io::Error| Failure {
        reason: UploadFailure::Read,
        detail: format!("{}: {e}", path.display()),
    };
    let store_error = |e: object_store::Error| Failure {
        reason: UploadFailure::Store,
        detail: e.to_string(),
    };
    if len <= part_bytes {
        let bytes = fs::read(path).map_err(read_error)?;
        store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(store_error)?;
        return Ok(());
    }
    let mut file = File::open(path).map_err(read_error)?;
    let part = usize::try_from(part_bytes).unwrap_or(usize::MAX);
    let upload = store.put_multipart(key).await.map_err(store_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
    let mut buf = vec![0u8; part.min(8 * 1024 * 1024)];
    let result: Result<(), Failure> = async {
        loop {
            let n = file.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                return Ok(());
            }
            writer.wait_for_capacity(2).await.map_err(store_error)?;
            writer.write(&buf[..n]);
        }
    }
    .await;
    match result {
        Ok(()) => {
            writer.finish().await.map_err(store_error)?;
            Ok(())
        }
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// Completed files under `folder`: (path under `dir`, size, modified), recursively.
fn completed_files(dir: &Path, folder: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            completed_files(dir, &path, out);
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !kind.is_file() || name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let (Ok(meta), Ok(rel)) = (entry.metadata(), path.strip_prefix(dir)) else {
            continue;
        };
        let modified = meta.modified().unwrap_or_else(|_| SystemTime::now());
        out.push((rel.to_path_buf(), meta.len(), modified));
    }
}

/// Removes the empty partition folders of `rel` (`…/date=…/hour=…`, relative to `dir`) whose time
/// range ended over an hour ago: no writer opens a file there any more.
fn remove_ended_partition(dir: &Path, rel: &Path) {
    let now = crate::time::now_us() / 1_000_000;
    let mut folder = Some(rel);
    while let Some(f) = folder {
        let is_partition = f
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("date=") || n.starts_with("hour="));
        if !is_partition
            || partition_end(f).is_none_or(|end| end + EMPTY_PARTITION_GRACE_SECONDS >= now)
        {
            return;
        }
        // Fails while the folder holds anything: then it stays.
        if fs::remove_dir(dir.join(f)).is_err() {
            return;
        }
        folder = f.parent();
    }
}

/// The files uploaded but kept locally (`log.upload_keep_local`): `<log.dir>/.uploaded`, one path
/// under the log dir a line. It is read as input (lines that are not such paths are ignored) and
/// only written by appending; losing a line costs one upload of the same file to the same key.
struct Journal {
    path: PathBuf,
    uploaded: HashSet<PathBuf>,
    /// Lines in the file that name files no longer there (rewritten past a bound).
    stale: usize,
}

impl Journal {
    fn load(dir: &Path) -> Self {
        let path = dir.join(JOURNAL);
        let text = fs::read(&path).unwrap_or_default();
        let uploaded = String::from_utf8_lossy(&text)
            .lines()
            .map(PathBuf::from)
            .filter(|p| journal_line_is_valid(p))
            .collect();
        Journal {
            path,
            uploaded,
            stale: 0,
        }
    }

    fn contains(&self, rel: &Path) -> bool {
        self.uploaded.contains(rel)
    }

    fn record(&mut self, rel: &Path) {
        let line = format!("{}\n", rel.display());
        let appended = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(journal = %self.path.display(), error = %e, "cannot record an upload; the file is uploaded again after a restart");
        }
        self.uploaded.insert(rel.to_path_buf());
    }

    /// Forgets files no longer there (retention deleted them); rewrites the file when many went.
    fn keep_only(&mut self, present: &HashSet<PathBuf>) {
        let before = self.uploaded.len();
        self.uploaded.retain(|p| present.contains(p));
        self.stale += before - self.uploaded.len();
        if self.stale > 1000 && self.stale > self.uploaded.len() {
            let mut sorted: Vec<&PathBuf> = self.uploaded.iter().collect();
            sorted.sort();
            let text: String = sorted
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            let temp = self.path.with_extension("tmp");
            let written = fs::write(&temp, text).and_then(|()| fs::rename(&temp, &self.path));
            if written.is_ok() {
                self.stale = 0;
            }
        }
    }
}

/// A journal line names a completed file under a stream folder: relative, no `..`, `.parquet`.
fn journal_line_is_valid(p: &Path) -> bool {
    p.is_relative()
        && p.extension().is_some_and(|x| x == "parquet")
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    const HOUR: &str = "predictions/model=m/date=2020-01-01/hour=22";

    fn config(url: &Url, keep_local: bool) -> UploadConfig {
        UploadConfig {
            url: url.clone(),
            keep_local,
            max_backlog_files: 1,
            timeout: Duration::from_secs(10),
            retry_max: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        }
    }

    /// A log folder with two completed files, a temporary one, a segment and a quarantined file.
    fn log_dir() -> tempfile::TempDir {
        let log = tempfile::tempdir().unwrap();
        let hour = log.path().join(HOUR);
        fs::create_dir_all(&hour).unwrap();
        fs::write(hour.join("0001.parquet"), b"first file").unwrap();
        fs::write(hour.join(".0002.parquet"), b"being written").unwrap();
        let feedback = log.path().join("feedback/date=2020-01-01");
        fs::create_dir_all(&feedback).unwrap();
        fs::write(feedback.join("0003.parquet"), b"labels").unwrap();
        fs::create_dir_all(log.path().join("wal/feedback")).unwrap();
        fs::write(log.path().join("wal/feedback/0004.wal"), b"segment").unwrap();
        fs::create_dir_all(log.path().join("quarantine/wal/feedback")).unwrap();
        fs::write(
            log.path().join("quarantine/wal/feedback/0005.parquet"),
            b"set aside",
        )
        .unwrap();
        log
    }

    fn make_shipper(dir: &Path, config: UploadConfig) -> (Shipper, LogMetrics, Arc<LogHealth>) {
        let metrics = Metrics::new("m").shared.log;
        let health = Arc::new(LogHealth::default());
        let (store, prefix) = open_store(&config.url, config.timeout).unwrap();
        let streams = Arc::new(Mutex::new(vec![
            Shipped {
                name: "predictions",
                root: PathBuf::from("predictions/model=m"),
                metrics: metrics.clone(),
            },
            Shipped {
                name: "feedback",
                root: PathBuf::from("feedback"),
                metrics: metrics.clone(),
            },
        ]));
        let shipper = Shipper::new(
            dir,
            store,
            prefix,
            config,
            Arc::clone(&health),
            Arc::new(DirLock::new(dir)),
            streams,
        );
        (shipper, metrics, health)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn files_under(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        completed_files(root, root, &mut out);
        let mut names: Vec<String> = out
            .into_iter()
            .map(|(rel, _, _)| rel.display().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn completed_files_go_to_their_final_keys_and_leave_the_folder_once_confirmed() {
        let log = log_dir();
        let bucket = tempfile::tempdir().unwrap();
        let url = Url::parse(&format!("file://{}/prefix", bucket.path().display())).unwrap();
        let (mut shipper, metrics, health) = make_shipper(log.path(), config(&url, false));

        assert_eq!(shipper.scan().len(), 2);
        assert_eq!(
            metrics
                .upload_backlog_files
                .with_label_values(&["predictions"])
                .get(),
            1
        );
        assert!(
            health
                .degraded()
                .unwrap()
                .contains("log.upload_max_backlog_files")
        );

        assert_eq!(block_on(shipper.pass(None)), 2);
        let shipped = bucket.path().join("prefix");
        assert_eq!(
            files_under(&shipped),
            [
                "feedback/date=2020-01-01/0003.parquet".to_string(),
                format!("{HOUR}/0001.parquet"),
            ]
        );
        assert_eq!(
            fs::read(shipped.join(HOUR).join("0001.parquet")).unwrap(),
            b"first file"
        );
        // Confirmed: the local copies are gone; what is not complete stays and is not shipped.
        assert!(!log.path().join(HOUR).join("0001.parquet").exists());
        assert!(log.path().join(HOUR).join(".0002.parquet").exists());
        assert!(log.path().join("wal/feedback/0004.wal").exists());
        assert!(!shipped.join("quarantine").exists());
        // A partition that ended long ago is removed once empty.
        assert!(!log.path().join("feedback/date=2020-01-01").exists());
        assert!(log.path().join(HOUR).exists(), "it still holds a file");
        for (stream, bytes) in [("predictions", 10), ("feedback", 6)] {
            assert_eq!(metrics.upload_files.with_label_values(&[stream]).get(), 1);
            assert_eq!(
                metrics.upload_bytes.with_label_values(&[stream]).get(),
                bytes
            );
            assert_eq!(
                metrics
                    .upload_backlog_files
                    .with_label_values(&[stream])
                    .get(),
                0
            );
        }
        assert_eq!(health.degraded(), None);
    }

    #[test]
    fn a_file_uploaded_again_after_a_crash_overwrites_its_own_key() {
        let log = log_dir();
        let bucket = tempfile::tempdir().unwrap();
        let url = Url::parse(&format!("file://{}", bucket.path().display())).unwrap();
        let (mut shipper, _, _) = make_shipper(log.path(), config(&url, false));
        block_on(shipper.pass(None));
        // The crash came after the put, before the local file went: it is there again.
        fs::write(log.path().join(HOUR).join("0001.parquet"), b"first file").unwrap();
        drop(shipper); // the process ends: its lock goes
        let (mut again, metrics, _) = make_shipper(log.path(), config(&url, false));
        assert_eq!(block_on(again.pass(None)), 1);
        assert_eq!(
            metrics
                .upload_files
                .with_label_values(&["predictions"])
                .get(),
            1
        );
        assert_eq!(
            files_under(bucket.path()),
            [
                "feedback/date=2020-01-01/0003.parquet".to_string(),
                format!("{HOUR}/0001.parquet"),
            ]
        );
    }

    #[test]
    fn kept_files_are_journaled_and_never_sent_twice() {
        let log = log_dir();
        let bucket = tempfile::tempdir().unwrap();
        let url = Url::parse(&format!("file://{}", bucket.path().display())).unwrap();
        let (mut shipper, metrics, _) = make_shipper(log.path(), config(&url, true));
        assert_eq!(block_on(shipper.pass(None)), 2);
        assert!(log.path().join(HOUR).join("0001.parquet").exists());
        assert_eq!(block_on(shipper.pass(None)), 0);
        assert_eq!(
            metrics
                .upload_backlog_files
                .with_label_values(&["predictions"])
                .get(),
            0
        );
        // A restart reads the journal back (its junk lines ignored).
        let mut journal = fs::OpenOptions::new()
            .append(true)
            .open(log.path().join(JOURNAL))
            .unwrap();
        journal
            .write_all(b"../../etc/passwd.parquet\n/abs.parquet\nnot a file\n")
            .unwrap();
        drop(shipper);
        let (mut again, metrics, _) = make_shipper(log.path(), config(&url, true));
        assert_eq!(again.journal.as_ref().unwrap().uploaded.len(), 2);
        assert_eq!(block_on(again.pass(None)), 0);
        assert_eq!(
            metrics.upload_files.with_label_values(&["feedback"]).get(),
            0
        );
        // A new file is shipped; one that retention deleted is forgotten.
        fs::write(log.path().join(HOUR).join("0006.parquet"), b"later").unwrap();
        fs::remove_file(log.path().join("feedback/date=2020-01-01/0003.parquet")).unwrap();
        assert_eq!(block_on(again.pass(None)), 1);
        let journal = &again.journal.as_ref().unwrap().uploaded;
        assert_eq!(journal.len(), 2);
        assert!(journal.contains(&PathBuf::from(format!("{HOUR}/0006.parquet"))));
    }

    #[test]
    fn a_failing_store_keeps_the_files_counts_and_backs_off_until_it_works() {
        let log = log_dir();
        let bucket = tempfile::tempdir().unwrap();
        // The store cannot create its folders: a file is in the way.
        let blocker = bucket.path().join("prefix");
        fs::write(&blocker, b"in the way").unwrap();
        let url = Url::parse(&format!("file://{}/prefix", bucket.path().display())).unwrap();
        let (mut shipper, metrics, health) = make_shipper(log.path(), config(&url, false));
        assert_eq!(block_on(shipper.pass(None)), 0);
        let failures = |m: &LogMetrics| -> u64 {
            ["predictions", "feedback"]
                .iter()
                .map(|s| {
                    m.upload_failures
                        .with_label_values(&[s, UploadFailure::Store.as_str()])
                        .get()
                })
                .sum()
        };
        // The first failure stops the pass (one backoff for the store).
        assert_eq!(failures(&metrics), 1);
        assert!(log.path().join(HOUR).join("0001.parquet").exists());
        assert!(health.degraded().unwrap().contains("last error"));
        assert!(shipper.retry_at.is_some());
        // While backing off nothing is tried.
        assert_eq!(block_on(shipper.pass(None)), 0);
        assert_eq!(failures(&metrics), 1);

        fs::remove_file(&blocker).unwrap();
        shipper.retry_at = Some(Instant::now());
        assert_eq!(block_on(shipper.pass(None)), 2);
        assert_eq!(shipper.backoff, RETRY_MIN);
        assert_eq!(health.degraded(), None);
        assert!(!log.path().join(HOUR).join("0001.parquet").exists());
    }

    #[test]
    fn a_stream_added_twice_is_shipped_once() {
        let log = log_dir();
        let bucket = tempfile::tempdir().unwrap();
        let url = Url::parse(&format!("file://{}", bucket.path().display())).unwrap();
        let health = Arc::new(LogHealth::default());
        let uploader = Uploader::start(
            log.path(),
            config(&url, true),
            Arc::clone(&health),
            Arc::new(DirLock::new(log.path())),
        );
        let metrics = Metrics::new("m").shared.log;
        for _ in 0..2 {
            uploader.add_stream("predictions", Path::new("predictions/model=m"), &metrics);
        }
        assert_eq!(uploader.streams.lock().unwrap().len(), 1);
        // Closing drains: the file is shipped (once) before the thread ends.
        uploader.close();
        assert_eq!(
            metrics
                .upload_files
                .with_label_values(&["predictions"])
                .get(),
            1
        );
        assert!(bucket.path().join(HOUR).join("0001.parquet").exists());
    }

    #[test]
    fn large_files_go_up_in_parts_and_appear_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.parquet");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let url = Url::parse(&format!("file://{}", bucket.path().display())).unwrap();
        let (store, prefix) = open_store(&url, Duration::from_secs(10)).unwrap();
        let key: Key = prefix
            .parts()
            .chain([PathPart::from("big.parquet")])
            .collect();
        let put = put_file(store.as_ref(), &key, &path, bytes.len() as u64, 16 * 1024);
        assert!(block_on(put).is_ok());
        assert_eq!(fs::read(bucket.path().join("big.parquet")).unwrap(), bytes);
    }

    #[test]
    fn upload_urls_are_checked_with_the_key_named() {
        assert!(UploadConfig::parse_url("file:///tmp/shiftwatch-bucket").is_ok());
        #[cfg(feature = "s3")]
        assert!(UploadConfig::parse_url("s3://bucket/some/prefix").is_ok());
        for (url, says) in [
            ("not a url", "is not a URL"),
            ("ftp://host/x", "unknown scheme"),
            (
                "https://example.com/x",
                "s3://, gs://, az:// or file:// URLs only",
            ),
            ("memory:///", "s3://, gs://, az:// or file:// URLs only"),
        ] {
            let e = UploadConfig::parse_url(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
        // Through the config: the key is named.
        let mut problems = Vec::new();
        let raw = crate::log::RawLog {
            upload_url: "ftp://host/x".into(),
            upload_timeout_seconds: 0.0,
            ..Default::default()
        };
        raw.validate(&mut |key, msg| problems.push(format!("{key}: {msg}")));
        assert!(
            problems.iter().any(|p| p.starts_with("log.upload_url:")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("log.upload_timeout_seconds:")),
            "{problems:?}"
        );
    }

    #[test]
    fn only_partitions_that_ended_long_ago_are_removed_and_only_when_empty() {
        let log = tempfile::tempdir().unwrap();
        let now_days = crate::time::now_us() / 86_400_000_000;
        let (y, m, d) = crate::time::civil_from_days(now_days);
        let today = format!("predictions/model=m/date={y:04}-{m:02}-{d:02}/hour=23");
        let old = "predictions/model=m/date=2020-01-01/hour=00";
        for p in [today.as_str(), old] {
            fs::create_dir_all(log.path().join(p)).unwrap();
        }
        remove_ended_partition(log.path(), Path::new(&today));
        remove_ended_partition(log.path(), Path::new(old));
        assert!(log.path().join(&today).exists());
        assert!(
            !log.path()
                .join("predictions/model=m/date=2020-01-01")
                .exists()
        );
        assert!(log.path().join("predictions/model=m").exists());
    }
}
