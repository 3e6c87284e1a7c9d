//! One log stream's writer thread: queue → record batches → write-ahead segment + Parquet file.
//!
//! Rules:
//! - Each open Parquet file belongs to one partition and has one write-ahead segment with the
//!   same uuid (`wal/<stream>[/model=<name>]/<uuid>.wal`, framed with a CRC-32 per batch: see
//!   `segment.rs`). A batch goes to the segment first (one `write(2)` of one frame), then to the
//!   Parquet writer; it counts as written once it is in the segment (or, without a write-ahead
//!   log, in the Parquet writer). Callers are answered only then: `interval` after the write,
//!   `strict` after the segment's fsync as well, and before the Parquet writer takes the batch.
//! - A new segment is fsynced with its folder, and every folder the log creates with its parent,
//!   before any row in it is acknowledged.
//! - A file is written as `.<uuid>.parquet` and renamed to `<uuid>.parquet` when complete (row
//!   count, size or age reached, or shutdown), after an fsync; only then is its segment deleted.
//! - Recovery turns each leftover segment into `<partition>/<uuid>.parquet` unless that file
//!   exists already (the crash came between rename and delete), so no row is written twice. It
//!   keeps every valid frame (a damaged frame with a sound header is passed over); a segment
//!   with damage (torn, checksum, malformed), columns the current schema cannot take, or that
//!   cannot be read at all is moved whole, after its valid rows are in Parquet, to
//!   `quarantine/<wal folder>/` with a `.json` note (reason, offset of the first damage, the
//!   frames passed over, rows kept), counted in `shiftwatch_log_segments_quarantined_total`. Its
//!   bytes are never deleted.
//! - Recovery never fails the start. What it cannot write now (disk full, a partition folder it
//!   cannot create, the directory's lock held elsewhere) stays in place, readiness says
//!   degraded, and the writer retries it from its periodic maintenance.
//! - A write error abandons the open file: its segment is kept for recovery once writes work
//!   again; the rows of the failed batch that reached no segment are counted as dropped (or
//!   failed back to strict-mode callers). Health says degraded until a write succeeds.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::{RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, SchemaRef};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::oneshot;

use super::segment::{self, SegmentEncoder, SegmentReader, Stop};
use super::{Durability, LogConfig, LogError, retention};
use crate::metrics::{DropReason, LogMetrics, QuarantineReason};

type Ack = oneshot::Sender<Result<(), LogError>>;
/// Builds one record batch from rows of a stream.
pub type ToBatch<R> = Box<dyn Fn(&[&R]) -> Result<RecordBatch, ArrowError> + Send>;

/// How a stream's rows become files.
pub struct StreamSpec<R> {
    pub name: &'static str,
    pub schema: SchemaRef,
    /// This stream's folder under the log dir (retention works inside it).
    pub root: PathBuf,
    /// Its write-ahead segments' folder under the log dir.
    pub wal: PathBuf,
    pub partition: Box<dyn Fn(i64) -> PathBuf + Send>,
    pub to_batch: ToBatch<R>,
    pub ts: Box<dyn Fn(&R) -> i64 + Send>,
    /// With a codec the write-ahead frames hold rows as they are (`segment::ROW_TAG`), and the
    /// Parquet batches are built from up to [`PARQUET_ROWS`] rows at once; without, each
    /// group is one Arrow IPC batch frame and one Parquet write.
    pub rows: Option<RowCodec<R>>,
}

/// Encodes rows into a row frame's payload, and decodes one.
pub struct RowCodec<R> {
    pub encode: fn(&[&R], &mut Vec<u8>),
    pub decode: fn(&[u8]) -> Result<Vec<R>, String>,
}

/// Rows of a row-framed stream kept back from its Parquet writer (they are in the segment
/// already): from this many on, the writer hands the oldest [`PARQUET_STEP`] to Parquet
/// whenever no row waits to be written to its segment.
pub const PARQUET_ROWS: usize = 1024;
/// Rows handed to the Parquet writer in one step: a row queued meanwhile waits for one such
/// step (about 0.1 ms) before it is written to its segment and answered, where one write of
/// 1,024 rows held the answers for 1–2 ms, and up to 20 ms with the page compressions it set
/// off.
const PARQUET_STEP: usize = 128;
/// Pending rows past which the writer hands them all to Parquet at once, queue or not: the
/// bound on what waits in memory when no moment is idle.
const PARQUET_BACKLOG: usize = 8 * PARQUET_ROWS;
/// Groups of a row-framed stream this large or larger are written as one Arrow IPC batch frame
/// and one Parquet write, as without a codec: per row, encoding rows one by one and building
/// the batch from them later costs more than a columnar batch of many (the writer benchmark's
/// 500,000 rows in groups of thousands: 418,000 rows/s with row frames only, against 652,000).
pub const ROW_FRAMES_BELOW: usize = 64;

/// What `append` did with a row.
#[derive(Debug)]
pub enum Appended {
    /// Queued (durability `none`); it will be written (or counted as dropped).
    Queued,
    /// Resolves once the row is in its write-ahead segment (`interval`: written; `strict`:
    /// written and fsynced), or with the reason it is not.
    Pending(oneshot::Receiver<Result<(), LogError>>),
}

/// Whether the log can write, shared by the writers and readiness: each part (the directory,
/// each stream's writes, each stream's recovery) sets and clears its own error, so one
/// stream's success does not hide another's failure.
#[derive(Debug, Default)]
pub struct LogHealth {
    errors: Mutex<BTreeMap<String, String>>,
}

impl LogHealth {
    /// `None` while every part works; else every error, `; `-separated.
    pub fn degraded(&self) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        (!errors.is_empty()).then(|| errors.values().cloned().collect::<Vec<_>>().join("; "))
    }
    pub(super) fn set(&self, part: &str, error: Option<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        match error {
            Some(e) => errors.insert(part.to_string(), e),
            None => errors.remove(part),
        };
    }
    fn is_set(&self, part: &str) -> bool {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(part)
    }
}

/// The log directory's lock file, taken at open or, when another process held it or the
/// directory was unusable then, by the first writer that needs it later. Nothing is written
/// under the directory without it.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    held: Mutex<Option<File>>,
}

impl DirLock {
    pub fn new(dir: &Path) -> Self {
        DirLock {
            path: dir.join(".shiftwatch.lock"),
            held: Mutex::new(None),
        }
    }

    /// Takes the lock unless held already.
    pub fn ensure(&self) -> Result<(), LogError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.is_some() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_dirs(dir).map_err(|source| LogError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(LogError::Locked(dir.to_path_buf()));
        }
        *held = Some(lock);
        Ok(())
    }
}

/// Creates `dir` and every missing folder above it, each fsynced with its parent, so a folder
/// the log made survives a power loss with what is in it.
pub fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(
        dir.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// fsyncs a folder (its entries: files created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

enum Message<R> {
    Row(R, Option<Ack>),
    Shutdown,
}

/// The request side of one stream.
pub struct Sink<R> {
    name: &'static str,
    sender: Sender<Message<R>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    durability: Durability,
    metrics: LogMetrics,
}

impl<R: Send + 'static> Sink<R> {
    /// Starts the stream's writer. `recovered`: whether its leftover segments were all
    /// recovered already (else the writer retries them from its maintenance).
    pub fn start(
        config: &LogConfig,
        spec: StreamSpec<R>,
        metrics: LogMetrics,
        health: Arc<LogHealth>,
        lock: Arc<DirLock>,
        recovered: bool,
    ) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let name = spec.name;
        let part = spec.wal.display().to_string();
        let writer = Writer::new(
            config,
            spec,
            metrics.clone(),
            Arc::clone(&health),
            lock,
            recovered,
        );
        let queue = Queue {
            receiver,
            name,
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            part: format!("{part} writer"),
        };
        let thread = std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || writer.run(&queue.receiver))
            .expect("spawning the log writer");
        Sink {
            name,
            sender,
            thread: Mutex::new(Some(thread)),
            durability: config.durability,
            metrics,
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn dropped(&self, reason: DropReason) {
        self.metrics
            .rows_dropped
            .with_label_values(&[self.name, reason.as_str()])
            .inc();
    }

    pub fn append(&self, row: R) -> Result<Appended, LogError> {
        // With a write-ahead log the caller waits for the row to be in it (DESIGN.md: a row
        // reaches the write-ahead log before its answer); `none` has nothing to wait for.
        let (ack, appended) = if self.durability != Durability::None {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Appended::Pending(rx))
        } else {
            (None, Appended::Queued)
        };
        match self.sender.try_send(Message::Row(row, ack)) {
            Ok(()) => Ok(appended),
            Err(TrySendError::Full(_)) => {
                self.dropped(DropReason::QueueFull);
                Err(LogError::Unavailable("the log queue is full".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped(DropReason::Closed);
                Err(LogError::Unavailable("the log writer has stopped".into()))
            }
        }
    }

    /// Asks the writer to write out everything and stop, and waits for it.
    pub fn close(&self) {
        let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let _ = self.sender.send(Message::Shutdown);
        if thread.join().is_err() {
            tracing::error!(stream = self.name, "the log writer panicked");
        }
    }
}

/// The writer's end of the queue, owned by its thread. However the writer ends (shutdown, or a
/// panic in a third-party encoder), every row still queued is answered with an error and counted
/// as dropped when this goes: a crossbeam channel whose receiver is gone keeps the messages
/// already in it until the last sender goes (process exit), and their callers would wait on
/// their acknowledgements until then. Rows sent after the receiver is gone are refused by
/// `append` (`Closed`).
struct Queue<R> {
    receiver: Receiver<Message<R>>,
    name: &'static str,
    metrics: LogMetrics,
    health: Arc<LogHealth>,
    part: String,
}

impl<R> Drop for Queue<R> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                stream = self.name,
                "the log writer panicked; rows are dropped"
            );
            self.health.set(
                &self.part,
                Some(format!(
                    "the {} log writer stopped after a panic",
                    self.name
                )),
            );
        }
        for message in self.receiver.try_iter() {
            if let Message::Row(_, ack) = message {
                self.metrics
                    .rows_dropped
                    .with_label_values(&[self.name, DropReason::Closed.as_str()])
                    .inc();
                if let Some(ack) = ack {
                    let _ = ack.send(Err(LogError::Unavailable(
                        "the log writer has stopped".into(),
                    )));
                }
            }
        }
    }
}

impl<R> Drop for Sink<R> {
    fn drop(&mut self) {
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = self.sender.send(Message::Shutdown);
            let _ = thread.join();
        }
    }
}

/// Columns with few distinct values, where dictionary encoding pays; elsewhere (ids, hashes,
/// floats) it only costs time before falling back.
const DICTIONARY_COLUMNS: &[&str] = &[
    "model_version",
    "endpoint",
    "predicted_class",
    "predicted_label",
    "content_type",
    "batch_size",
    "image_width",
    "image_height",
    "flags.list.item",
    "label",
    "class",
    "source",
];

fn writer_properties(row_group_rows: usize) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_dictionary_enabled(false)
        // A page is compressed when it fills, inside whichever write fills it: at the default
        // 1 MB that write held the writer (and the answers queued behind it) for 2–20 ms; at
        // 64 KiB for well under 1 ms, and the files are no bigger (10.8 against 11.1 bytes a
        // row of the load test's traffic).
        .set_data_page_size_limit(64 * 1024)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("shiftwatch {}", env!("CARGO_PKG_VERSION")));
    for column in DICTIONARY_COLUMNS {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), true);
    }
    builder.build()
}

struct OpenFile {
    id: uuid::Uuid,
    partition: PathBuf,
    temp_path: PathBuf,
    final_path: PathBuf,
    parquet: ArrowWriter<BufWriter<File>>,
    wal: Option<SegmentFile>,
    rows: usize,
    opened: Instant,
}

/// An open write-ahead segment: one frame per batch, each written with one `write(2)`.
struct SegmentFile {
    path: PathBuf,
    file: File,
    encoder: SegmentEncoder,
    /// Bytes written so far (a failed write is cut back to this).
    len: u64,
    /// Bytes known to be on disk (fsynced); a strict fsync that fails is cut back to this.
    synced: u64,
}

impl SegmentFile {
    fn append(&mut self, batch: &RecordBatch, frame: &mut Vec<u8>) -> Result<(), String> {
        frame.clear();
        self.encoder
            .encode(batch, frame)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.write_frame(frame)
    }

    /// Appends a frame holding `payload` (a row frame's).
    fn append_payload(&mut self, payload: &[u8], frame: &mut Vec<u8>) -> Result<(), String> {
        frame.clear();
        segment::push_frame(payload, frame).map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.write_frame(frame)
    }

    fn write_frame(&mut self, frame: &[u8]) -> Result<(), String> {
        if let Err(e) = self.file.write_all(frame) {
            // No torn frame left behind when the disk refused part of it.
            let _ = self.file.set_len(self.len);
            return Err(format!("{}: {e}", self.path.display()));
        }
        self.len += frame.len() as u64;
        Ok(())
    }
}

/// The `interval` fsyncs of the write-ahead segments, on a thread of their own: an fsync takes
/// 5–20 ms on a busy disk, and on the writer's thread it held every answer queued behind it
/// (measured at 8 connections: a p99 of 2.08–2.25 ms with this thread, 3.43–3.88 without). One round of
/// fsyncs is in flight at a time; its results come back to the writer, which acts on them as on
/// its own fsync's.
struct Syncer {
    jobs: Option<Sender<SyncJob>>,
    done: Receiver<SyncDone>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
}

/// One segment to fsync: a second handle on its file, and how many bytes it held when sent.
struct SyncJob {
    partition: PathBuf,
    file: uuid::Uuid,
    handle: File,
    len: u64,
}

struct SyncDone {
    partition: PathBuf,
    file: uuid::Uuid,
    len: u64,
    result: std::io::Result<()>,
}

impl Syncer {
    fn start(stream: &str) -> std::io::Result<Self> {
        let (jobs, receiver) = crossbeam_channel::unbounded::<SyncJob>();
        let (sender, done) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(format!("fsync-{stream}"))
            .spawn(move || {
                for job in receiver {
                    let result = job.handle.sync_data();
                    let done = SyncDone {
                        partition: job.partition,
                        file: job.file,
                        len: job.len,
                        result,
                    };
                    if sender.send(done).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Syncer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// Sends one segment to be fsynced; `false` when the thread is gone.
    fn send(&mut self, job: SyncJob) -> bool {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        self.in_flight += usize::from(sent);
        sent
    }

    /// Results that came back since the last call.
    fn finished(&mut self) -> Vec<SyncDone> {
        let done: Vec<SyncDone> = self.done.try_iter().collect();
        self.in_flight = self.in_flight.saturating_sub(done.len());
        done
    }

    /// Lets the fsyncs in flight end and the thread stop.
    fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer<R> {
    config: LogConfig,
    spec: StreamSpec<R>,
    properties: WriterProperties,
    open: BTreeMap<PathBuf, OpenFile>,
    metrics: LogMetrics,
    health: Arc<LogHealth>,
    /// This stream's part of the health: its writes (`recover` keeps its own).
    write_part: String,
    lock: Arc<DirLock>,
    /// When the oldest write-ahead data not yet fsynced was written.
    dirty_since: Option<Instant>,
    /// Where `interval` fsyncs run (`None` for the other durabilities, or when its thread
    /// could not start: then the writer fsyncs itself).
    syncer: Option<Syncer>,
    /// When to try recovering leftover segments again (segments of abandoned files, or of a
    /// start whose recovery could not write); `None` when nothing waits.
    recovery: Option<Instant>,
    recovery_backoff: Duration,
    last_maintenance: Instant,
    drops_reported: u64,
    last_drop_report: Instant,
    /// Reused buffer of one frame.
    frame: Vec<u8>,
    /// Reused buffer of one row frame's payload.
    payload: Vec<u8>,
    /// Row-framed streams: rows in their partition's segment, not yet in its Parquet writer.
    pending: BTreeMap<PathBuf, VecDeque<R>>,
}

/// Rows taken from the queue in one go at most (one write-ahead batch).
const MAX_GROUP: usize = 8192;
const TICK: Duration = Duration::from_millis(50);
/// How long a writer gathers rows into one batch when nobody waits for it.
const GROUP_WAIT: Duration = Duration::from_millis(20);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);
/// Retries of a recovery that could not write: from this, doubling up to the maximum.
const RECOVERY_RETRY_MIN: Duration = Duration::from_millis(500);
const RECOVERY_RETRY_MAX: Duration = Duration::from_secs(30);
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

impl<R> Writer<R> {
    fn new(
        config: &LogConfig,
        spec: StreamSpec<R>,
        metrics: LogMetrics,
        health: Arc<LogHealth>,
        lock: Arc<DirLock>,
        recovered: bool,
    ) -> Self {
        let name = spec.name;
        let part = spec.wal.display().to_string();
        Writer {
            properties: writer_properties(config.row_group_rows),
            config: config.clone(),
            write_part: format!("{part} write"),
            spec,
            open: BTreeMap::new(),
            metrics,
            health,
            lock,
            dirty_since: None,
            syncer: (config.durability == Durability::Interval)
                .then(|| Syncer::start(name))
                .and_then(|started| {
                    started
                        .inspect_err(|e| tracing::warn!(stream = name, error = %e, "no fsync thread; the log writer fsyncs its segments itself"))
                        .ok()
                }),
            recovery: (!recovered).then(Instant::now),
            recovery_backoff: RECOVERY_RETRY_MIN,
            last_maintenance: Instant::now(),
            drops_reported: 0,
            last_drop_report: Instant::now(),
            frame: Vec::new(),
            payload: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    fn run(mut self, receiver: &Receiver<Message<R>>) {
        let mut rows: Vec<R> = Vec::new();
        let mut acks: Vec<Option<Ack>> = Vec::new();
        let mut shutdown = false;
        while !shutdown {
            match receiver.recv_timeout(TICK) {
                Ok(Message::Row(r, a)) => {
                    rows.push(r);
                    acks.push(a);
                }
                Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => shutdown = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Group commit: take whatever else is queued. Without strict durability nobody
            // waits for the write, so gather for up to GROUP_WAIT: one batch of many rows costs
            // far less than many batches of a few.
            // With nothing to wait for, only what is already queued: `recv_deadline` with a
            // deadline already past still spins and yields the CPU a few times before it gives
            // up (crossbeam's backoff), which cost this thread half its time.
            let wait = self.group_wait();
            let deadline = Instant::now() + wait;
            while rows.len() < MAX_GROUP && !shutdown {
                let next = if rows.is_empty() {
                    break;
                } else if wait.is_zero() {
                    receiver.try_recv().map_err(|_| ())
                } else {
                    receiver.recv_deadline(deadline).map_err(|_| ())
                };
                match next {
                    Ok(Message::Row(r, a)) => {
                        rows.push(r);
                        acks.push(a);
                    }
                    Ok(Message::Shutdown) => shutdown = true,
                    Err(_) => break,
                }
            }
            if !rows.is_empty() {
                self.write_group(std::mem::take(&mut rows), std::mem::take(&mut acks));
            }
            // Parquet while no row waits for its segment, a step at a time.
            while receiver.is_empty() && self.parquet_step() {}
            self.metrics
                .queue_depth
                .with_label_values(&[self.spec.name])
                .set(receiver.len() as i64);
            self.periodic(shutdown);
        }
        // Rows that raced the shutdown message.
        let late: Vec<(R, Option<Ack>)> = receiver
            .try_iter()
            .filter_map(|m| match m {
                Message::Row(r, a) => Some((r, a)),
                Message::Shutdown => None,
            })
            .collect();
        if !late.is_empty() {
            let (r, a) = late.into_iter().unzip();
            self.write_group(r, a);
        }
        self.close_all();
        self.report_drops(true);
    }

    /// How long to gather rows before writing: only without a write-ahead log, where a row
    /// is not durable before its file closes anyway. With one, a row reaches the segment as
    /// soon as the writer takes it (DESIGN.md: "at once").
    fn group_wait(&self) -> Duration {
        match self.config.durability {
            Durability::Strict | Durability::Interval => Duration::ZERO,
            Durability::None => GROUP_WAIT,
        }
    }

    fn write_group(&mut self, rows: Vec<R>, acks: Vec<Option<Ack>>) {
        if self.spec.rows.is_some() && self.config.durability != Durability::None {
            if rows.len() < ROW_FRAMES_BELOW {
                self.write_row_group(rows, acks);
                return;
            }
            // A big group is cheaper as one columnar batch (frame and Parquet write); the
            // rows pending before it go to Parquet first, so that the order holds.
            let partitions: Vec<PathBuf> = self.pending.keys().cloned().collect();
            for partition in partitions {
                self.flush_pending(&partition);
            }
        }
        let groups = self.by_partition(&rows);
        let wal = self.config.durability != Durability::None;
        let mut ok = vec![false; rows.len()];
        // First every batch into its write-ahead segment: that is when its rows count as
        // written, and their callers are answered before the Parquet writer runs.
        let mut logged: Vec<(PathBuf, RecordBatch, Vec<usize>)> = Vec::new();
        for (partition, idx) in groups {
            let refs: Vec<&R> = idx.iter().map(|&i| &rows[i]).collect();
            match self.log_batch(&partition, &refs) {
                Ok(batch) => {
                    if wal {
                        for i in &idx {
                            ok[*i] = true;
                        }
                    }
                    logged.push((partition, batch, idx));
                }
                Err(e) => {
                    self.fail(&partition, &e);
                }
            }
        }
        // Durability: strict fsyncs before anyone is answered; the rows of a partition whose
        // fsync fails are answered as failed (and taken out of its segment), the others not.
        let sync_error = self.make_durable(logged.iter().map(|(p, _, idx)| (p, idx)), &mut ok);
        let mut acks = Some(acks);
        if wal {
            self.answer(
                &ok,
                sync_error,
                acks.take().unwrap_or_default(),
                !logged.is_empty(),
            );
        }
        // Then Parquet. With a write-ahead log a failure here loses nothing: the rows are in
        // the abandoned segment, recovered later.
        for (partition, batch, idx) in logged {
            if !self.open.contains_key(&partition) {
                continue; // abandoned above (strict fsync failed)
            }
            match self.write_parquet(&partition, &batch) {
                Ok(()) => {
                    for i in &idx {
                        ok[*i] = true;
                    }
                }
                Err(e) => {
                    self.fail(&partition, &e);
                }
            }
        }
        if let Some(acks) = acks {
            let any = ok.iter().any(|o| *o);
            self.answer(&ok, None, acks, any);
        }
        self.rotate_full();
    }

    /// The rows' indices by partition (of their arrival time), in order within each.
    fn by_partition(&self, rows: &[R]) -> BTreeMap<PathBuf, Vec<usize>> {
        let mut groups: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            groups
                .entry((self.spec.partition)((self.spec.ts)(r)))
                .or_default()
                .push(i);
        }
        groups
    }

    /// Durability for the partitions just written, each with its rows' indices: `strict`
    /// fsyncs them before anyone is answered, and the rows of a partition whose fsync fails
    /// are marked not written (and taken out of its segment); `interval` notes the oldest
    /// data waiting for its fsync. Returns the fsync error to answer with.
    fn make_durable<'p>(
        &mut self,
        logged: impl Iterator<Item = (&'p PathBuf, &'p Vec<usize>)>,
        ok: &mut [bool],
    ) -> Option<String> {
        let mut sync_error = None;
        let mut any = false;
        for (partition, idx) in logged {
            any = true;
            if self.config.durability != Durability::Strict {
                continue;
            }
            if let Err(e) = self.sync_wal(partition) {
                sync_error = Some(e.to_string());
                self.cut_unsynced(partition);
                self.fail(partition, &e.to_string());
                for i in idx {
                    ok[*i] = false;
                }
            }
        }
        match self.config.durability {
            Durability::Strict => self.dirty_since = None,
            Durability::Interval if any => {
                self.dirty_since.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
        sync_error
    }

    /// Size and row-count rotation, right after a group (age rotation is in `periodic`). For
    /// a row-framed stream the size counts Parquet bytes, which trail by the pending rows: at
    /// most `PARQUET_BACKLOG` − 1 rows over.
    fn rotate_full(&mut self) {
        let full: Vec<PathBuf> = self
            .open
            .iter()
            .filter(|(_, f)| {
                f.rows >= self.config.rotate_rows
                    || f.parquet.bytes_written() + f.parquet.in_progress_size()
                        >= self.config.rotate_bytes
            })
            .map(|(p, _)| p.clone())
            .collect();
        for partition in full {
            self.finish(&partition);
        }
    }

    /// [`Self::write_group`] for a row-framed stream: each partition's rows go to its segment as
    /// one row frame, their callers are answered, and the rows wait in `pending` for a Parquet
    /// write of many.
    fn write_row_group(&mut self, rows: Vec<R>, acks: Vec<Option<Ack>>) {
        let groups = self.by_partition(&rows);
        let mut ok = vec![false; rows.len()];
        let mut logged: Vec<(PathBuf, Vec<usize>)> = Vec::new();
        for (partition, idx) in groups {
            let refs: Vec<&R> = idx.iter().map(|&i| &rows[i]).collect();
            match self.log_rows(&partition, &refs) {
                Ok(()) => {
                    for i in &idx {
                        ok[*i] = true;
                    }
                    logged.push((partition, idx));
                }
                Err(e) => self.fail(&partition, &e),
            }
        }
        let sync_error = self.make_durable(logged.iter().map(|(p, idx)| (p, idx)), &mut ok);
        self.answer(&ok, sync_error, acks, !logged.is_empty());
        let mut rows: Vec<Option<R>> = rows.into_iter().map(Some).collect();
        for (partition, idx) in logged {
            let Some(file) = self.open.get_mut(&partition) else {
                continue; // abandoned above (strict fsync failed): its segment is recovered
            };
            file.rows += idx.len();
            let pending = self.pending.entry(partition.clone()).or_default();
            pending.extend(idx.iter().filter_map(|&i| rows[i].take()));
            if pending.len() >= PARQUET_BACKLOG {
                self.flush_pending(&partition);
            }
        }
        self.rotate_full();
    }

    /// Writes one row frame of `rows` to the partition's segment (opening its file first when
    /// none is open).
    fn log_rows(&mut self, partition: &Path, rows: &[&R]) -> Result<(), String> {
        let Some(codec) = &self.spec.rows else {
            return Err("this stream has no row frames".into());
        };
        self.payload.clear();
        self.payload.extend_from_slice(&segment::ROW_TAG);
        (codec.encode)(rows, &mut self.payload);
        if !self.open.contains_key(partition) {
            let file = self.open_file(partition)?;
            self.open.insert(partition.to_path_buf(), file);
        }
        let Some(file) = self.open.get_mut(partition) else {
            return Err("the partition's file is not open".into());
        };
        match &mut file.wal {
            Some(wal) => wal.append_payload(&self.payload, &mut self.frame),
            None => Err("row frames need a write-ahead segment".into()),
        }
    }

    /// One step of Parquet work, when a partition has [`PARQUET_ROWS`] pending: its oldest
    /// [`PARQUET_STEP`] rows to its Parquet writer. Returns whether there was one.
    fn parquet_step(&mut self) -> bool {
        let Some((partition, rows)) = self
            .pending
            .iter_mut()
            .find(|(_, rows)| rows.len() >= PARQUET_ROWS)
        else {
            return false;
        };
        let step: Vec<R> = rows.drain(..PARQUET_STEP.min(rows.len())).collect();
        let partition = partition.clone();
        self.write_pending(&partition, step.iter());
        true
    }

    /// Hands `rows` (pending ones, in order) to the partition's Parquet writer as one batch.
    /// A failure abandons the file: its segment holds every row, for recovery.
    fn write_pending<'r>(&mut self, partition: &Path, rows: impl Iterator<Item = &'r R>)
    where
        R: 'r,
    {
        let refs: Vec<&R> = rows.collect();
        let Some(file) = self.open.get_mut(partition).filter(|_| !refs.is_empty()) else {
            return;
        };
        let result = (self.spec.to_batch)(&refs)
            .map_err(|e| e.to_string())
            .and_then(|batch| file.parquet.write(&batch).map_err(|e| e.to_string()));
        if let Err(e) = result {
            self.fail(partition, &e);
        }
    }

    /// Hands the partition's pending rows to its Parquet writer as one batch. A failure
    /// abandons the file: its segment holds every row, for recovery.
    fn flush_pending(&mut self, partition: &Path) {
        let Some(rows) = self.pending.remove(partition) else {
            return;
        };
        // Pending rows exist only beside their open file: `fail` and `finish` (through here)
        // are the only ways a file leaves `open`.
        debug_assert!(
            rows.is_empty() || self.open.contains_key(partition),
            "pending rows without their file"
        );
        self.write_pending(partition, rows.iter());
    }

    /// Health, acknowledgements and counters for the rows of one group: `ok[i]` says row `i`
    /// is written (in its segment, or without a write-ahead log in its Parquet writer).
    fn answer(
        &mut self,
        ok: &[bool],
        sync_error: Option<String>,
        acks: Vec<Option<Ack>>,
        wrote: bool,
    ) {
        // Health first, so that a caller answered after this write sees it.
        if wrote
            && ok.iter().any(|o| *o)
            && sync_error.is_none()
            && self.health.is_set(&self.write_part)
        {
            // Writes work again: recover what the fault left behind now.
            if self.recovery.is_some() {
                self.recovery = Some(Instant::now());
                self.recovery_backoff = RECOVERY_RETRY_MIN;
            }
            self.health.set(&self.write_part, None);
        }
        let mut written = 0u64;
        let mut dropped = 0u64;
        for (i, ack) in acks.into_iter().enumerate() {
            let success = ok.get(i).copied().unwrap_or(false);
            if success {
                written += 1;
            } else {
                dropped += 1;
            }
            if let Some(ack) = ack {
                let result = if success {
                    Ok(())
                } else {
                    Err(LogError::Unavailable(
                        sync_error
                            .clone()
                            .unwrap_or_else(|| "the log cannot write".into()),
                    ))
                };
                let _ = ack.send(result);
            }
        }
        if dropped > 0 {
            self.metrics
                .rows_dropped
                .with_label_values(&[self.spec.name, DropReason::WriteError.as_str()])
                .inc_by(dropped);
        }
        self.metrics
            .rows_written
            .with_label_values(&[self.spec.name])
            .inc_by(written);
    }

    /// Builds one batch and writes it to the partition's segment (opening the partition's
    /// file first when none is open). Without a write-ahead log only the batch is built.
    fn log_batch(&mut self, partition: &Path, rows: &[&R]) -> Result<RecordBatch, String> {
        let batch = (self.spec.to_batch)(rows).map_err(|e| e.to_string())?;
        if !self.open.contains_key(partition) {
            let file = self.open_file(partition)?;
            self.open.insert(partition.to_path_buf(), file);
        }
        let Some(file) = self.open.get_mut(partition) else {
            return Err("the partition's file is not open".into());
        };
        if let Some(wal) = &mut file.wal {
            wal.append(&batch, &mut self.frame)?;
        }
        Ok(batch)
    }

    fn write_parquet(&mut self, partition: &Path, batch: &RecordBatch) -> Result<(), String> {
        let Some(file) = self.open.get_mut(partition) else {
            return Err("the partition's file is not open".into());
        };
        file.parquet.write(batch).map_err(|e| e.to_string())?;
        file.rows += batch.num_rows();
        Ok(())
    }

    fn open_file(&self, partition: &Path) -> Result<OpenFile, String> {
        self.lock.ensure().map_err(|e| e.to_string())?;
        let id = uuid::Uuid::now_v7();
        let dir = self.config.dir.join(partition);
        create_dirs(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let temp_path = dir.join(format!(".{id}.parquet"));
        let final_path = dir.join(format!("{id}.parquet"));
        let wal = if self.config.durability == Durability::None {
            None
        } else {
            let wal_dir = self.config.dir.join(&self.spec.wal);
            create_dirs(&wal_dir).map_err(|e| format!("{}: {e}", wal_dir.display()))?;
            let path = wal_dir.join(format!("{id}.{}", segment::EXTENSION));
            let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
            let (encoder, first) = SegmentEncoder::new(&self.spec.schema).map_err(|e| err(&e))?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| err(&e))?;
            // The segment and its name are durable before any row in it is acknowledged.
            let created = file
                .write_all(&first)
                .and_then(|()| file.sync_all())
                .and_then(|()| sync_dir(&wal_dir));
            if let Err(e) = created {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(err(&e));
            }
            Some(SegmentFile {
                path,
                file,
                encoder,
                len: first.len() as u64,
                synced: first.len() as u64,
            })
        };
        let file = File::create(&temp_path).map_err(|e| format!("{}: {e}", temp_path.display()));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                if let Some(w) = wal {
                    drop(w.file);
                    let _ = fs::remove_file(&w.path);
                }
                return Err(e);
            }
        };
        let parquet = ArrowWriter::try_new(
            BufWriter::new(file),
            Arc::clone(&self.spec.schema),
            Some(self.properties.clone()),
        )
        .map_err(|e| format!("{}: {e}", temp_path.display()))?;
        Ok(OpenFile {
            id,
            partition: partition.to_path_buf(),
            temp_path,
            final_path,
            parquet,
            wal,
            rows: 0,
            opened: Instant::now(),
        })
    }

    fn sync_wal(&mut self, partition: &Path) -> std::io::Result<()> {
        if let Some(file) = self.open.get_mut(partition)
            && let Some(wal) = &mut file.wal
        {
            wal.file.sync_data()?;
            wal.synced = wal.len;
        }
        Ok(())
    }

    /// The `interval` fsync of a partition's segment: sent to the fsync thread, or done here
    /// without one.
    fn sync_wal_later(&mut self, partition: &Path) -> std::io::Result<()> {
        let Some(syncer) = &mut self.syncer else {
            return self.sync_wal(partition);
        };
        let Some(file) = self.open.get(partition) else {
            return Ok(());
        };
        let Some(wal) = &file.wal else {
            return Ok(());
        };
        if wal.synced == wal.len {
            return Ok(());
        }
        let job = SyncJob {
            partition: partition.to_path_buf(),
            file: file.id,
            handle: wal.file.try_clone()?,
            len: wal.len,
        };
        if syncer.send(job) {
            Ok(())
        } else {
            self.syncer = None;
            self.sync_wal(partition)
        }
    }

    /// Acts on the fsyncs the fsync thread finished: the bytes they covered are on disk, or
    /// the file they were for is abandoned as after a failed fsync here (only when that file
    /// is still the partition's open one; a finished file needs its segment no more).
    fn synced(&mut self) {
        let Some(syncer) = &mut self.syncer else {
            return;
        };
        for done in syncer.finished() {
            self.apply_sync(done);
        }
    }

    fn apply_sync(&mut self, done: SyncDone) {
        let Some(file) = self
            .open
            .get_mut(&done.partition)
            .filter(|f| f.id == done.file)
        else {
            return;
        };
        match done.result {
            Ok(()) => {
                if let Some(wal) = &mut file.wal {
                    wal.synced = wal.synced.max(done.len);
                }
            }
            Err(e) => self.fail(&done.partition, &e.to_string()),
        }
    }

    /// After a strict fsync failed: the frames written since the last good fsync belong to
    /// rows about to be answered as failed, so they leave the segment, and recovery cannot
    /// bring them back beside the client's retry (best effort: the file is abandoned next).
    fn cut_unsynced(&mut self, partition: &Path) {
        if let Some(file) = self.open.get_mut(partition)
            && let Some(wal) = &mut file.wal
            && wal.len > wal.synced
        {
            if let Err(e) = wal.file.set_len(wal.synced) {
                tracing::warn!(segment = %wal.path.display(), error = %e, "cannot cut the unsynced frames off a segment");
            } else {
                wal.len = wal.synced;
            }
        }
    }

    /// Abandons the file of `partition` after a write error; its segment (fsynced, best
    /// effort, so that it outlives a power loss too) waits for recovery.
    fn fail(&mut self, partition: &Path, error: &str) {
        tracing::debug!(stream = self.spec.name, partition = %partition.display(), error, "log write failed");
        if !self.health.is_set(&self.write_part) {
            tracing::error!(
                stream = self.spec.name,
                error,
                "the log cannot write; rows are dropped and counted until it can"
            );
        }
        self.health.set(
            &self.write_part,
            Some(format!("{}: {error}", self.spec.name)),
        );
        // Rows not yet in Parquet are in the segment, which recovery turns into Parquet whole.
        self.pending.remove(partition);
        let Some(file) = self.open.remove(partition) else {
            return;
        };
        let _ = fs::remove_file(&file.temp_path);
        if let Some(wal) = file.wal {
            let _ = wal.file.sync_data();
            self.recovery.get_or_insert_with(Instant::now);
        }
    }

    /// Completes the file of `partition`: its pending rows, footer, fsync, rename, then its
    /// segment goes.
    fn finish(&mut self, partition: &Path) {
        self.flush_pending(partition);
        let Some(file) = self.open.remove(partition) else {
            return;
        };
        let (id, rows) = (file.id, file.rows);
        match close_file(file) {
            Ok(()) => {
                self.metrics
                    .files_written
                    .with_label_values(&[self.spec.name])
                    .inc();
                tracing::debug!(stream = self.spec.name, %id, rows, "log file complete");
            }
            Err((e, segment)) => {
                self.health
                    .set(&self.write_part, Some(format!("{}: {e}", self.spec.name)));
                tracing::error!(stream = self.spec.name, error = %e, "cannot complete a log file; its rows stay in the write-ahead log");
                if segment.is_some() {
                    self.recovery.get_or_insert_with(Instant::now);
                } else {
                    self.metrics
                        .rows_dropped
                        .with_label_values(&[self.spec.name, DropReason::WriteError.as_str()])
                        .inc_by(rows as u64);
                }
            }
        }
    }

    fn close_all(&mut self) {
        let partitions: Vec<PathBuf> = self.open.keys().cloned().collect();
        for p in partitions {
            self.finish(&p);
        }
        if let Some(syncer) = &mut self.syncer {
            syncer.stop();
        }
        if self.recovery.is_some() {
            self.recover_leftovers();
        }
    }

    fn periodic(&mut self, shutdown: bool) {
        if shutdown {
            return;
        }
        self.synced();
        if let Some(since) = self.dirty_since
            && since.elapsed() >= self.config.fsync_interval
            && self.syncer.as_ref().is_none_or(|s| s.in_flight == 0)
        {
            let partitions: Vec<PathBuf> = self.open.keys().cloned().collect();
            for p in partitions {
                if let Err(e) = self.sync_wal_later(&p) {
                    self.fail(&p, &e.to_string());
                }
            }
            self.dirty_since = None;
        }
        let aged: Vec<PathBuf> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= self.config.rotate_age)
            .map(|(p, _)| p.clone())
            .collect();
        for p in aged {
            self.finish(&p);
        }
        if self.recovery.is_some_and(|due| Instant::now() >= due) {
            self.recover_leftovers();
        }
        if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            self.last_maintenance = Instant::now();
            let deleted = retention::enforce(
                &self.config.dir,
                &self.spec.root,
                self.config.retention,
                self.config.max_disk_bytes,
                &self
                    .open
                    .values()
                    .map(|f| f.partition.clone())
                    .collect::<Vec<_>>(),
            );
            if deleted > 0 {
                self.metrics
                    .files_deleted
                    .with_label_values(&[self.spec.name])
                    .inc_by(deleted as u64);
            }
        }
        self.report_drops(false);
    }

    /// Recovers the stream's segments that no open file writes (abandoned files, a start whose
    /// recovery could not write); retried with a growing pause while it cannot write.
    fn recover_leftovers(&mut self) {
        let mut busy: Vec<PathBuf> = Vec::new();
        for f in self.open.values() {
            busy.push(f.temp_path.clone());
            if let Some(wal) = &f.wal {
                busy.push(wal.path.clone());
            }
        }
        let pass = recover(
            &self.config.dir,
            &self.spec,
            &self.metrics,
            &self.health,
            &self.lock,
            &busy,
        );
        if pass.complete {
            self.recovery = None;
            self.recovery_backoff = RECOVERY_RETRY_MIN;
        } else {
            self.recovery = Some(Instant::now() + self.recovery_backoff);
            self.recovery_backoff = (self.recovery_backoff * 2).min(RECOVERY_RETRY_MAX);
        }
    }

    /// Logs drops once per interval, never silently.
    fn report_drops(&mut self, force: bool) {
        if !force && self.last_drop_report.elapsed() < DROP_REPORT_EVERY {
            return;
        }
        self.last_drop_report = Instant::now();
        let total: u64 = [
            DropReason::QueueFull,
            DropReason::WriteError,
            DropReason::Closed,
        ]
        .iter()
        .map(|r| {
            self.metrics
                .rows_dropped
                .with_label_values(&[self.spec.name, r.as_str()])
                .get()
        })
        .sum();
        if total > self.drops_reported {
            tracing::warn!(
                stream = self.spec.name,
                dropped = total - self.drops_reported,
                dropped_total = total,
                error = self.health.degraded().unwrap_or_default(),
                "log rows dropped since the last report"
            );
            self.drops_reported = total;
        }
    }
}

/// Footer, fsync, rename, directory fsync, then the segment is deleted. On error returns the
/// segment that still holds the rows.
fn close_file(mut file: OpenFile) -> Result<(), (String, Option<PathBuf>)> {
    let segment = file.wal.as_ref().map(|w| w.path.clone());
    let fail = |e: String| (e, segment.clone());
    file.parquet
        .finish()
        .map_err(|e| fail(format!("{}: {e}", file.temp_path.display())))?;
    let inner = file.parquet.inner_mut();
    inner
        .flush()
        .and_then(|()| inner.get_ref().sync_all())
        .map_err(|e| fail(format!("{}: {e}", file.temp_path.display())))?;
    drop(file.parquet);
    fs::rename(&file.temp_path, &file.final_path)
        .map_err(|e| fail(format!("{}: {e}", file.final_path.display())))?;
    // The new name must be on disk before the segment goes; if it is not, the segment stays
    // and recovery finds the file complete (and only removes the segment).
    if let Some(dir) = file.final_path.parent() {
        sync_dir(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    }
    if let Some(wal) = file.wal {
        drop(wal.file);
        let _ = fs::remove_file(&wal.path);
    }
    Ok(())
}

/// What one recovery pass over a stream's segments did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Rows that reached Parquet.
    pub rows: usize,
    /// Whether every segment was dealt with (recovered, quarantined or removed); otherwise
    /// some wait for a retry.
    pub complete: bool,
}

/// Recovers every leftover segment of a stream except `busy` ones (the writer's open files),
/// removes stale temporary Parquet files, and reports through `health` what it could not
/// write. Never fails: what it cannot do now waits in place for the next pass.
pub fn recover<R>(
    dir: &Path,
    spec: &StreamSpec<R>,
    metrics: &LogMetrics,
    health: &LogHealth,
    lock: &DirLock,
    busy: &[PathBuf],
) -> Pass {
    let part = format!("{} recovery", spec.wal.display());
    let mut errors: Vec<String> = Vec::new();
    let mut total = 0;
    match lock.ensure() {
        Err(e) => errors.push(e.to_string()),
        Ok(()) => {
            let wal = dir.join(&spec.wal);
            match fs::read_dir(&wal) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("{}: {e}", wal.display())),
                Ok(entries) => {
                    let mut segments: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.extension().is_some_and(|x| {
                                x == segment::EXTENSION || x == segment::LEGACY_EXTENSION
                            })
                        })
                        .filter(|p| !busy.contains(p))
                        .collect();
                    segments.sort();
                    for s in segments {
                        match recover_segment(dir, spec, metrics, &s) {
                            Ok(n) => total += n,
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                }
            }
            retention::remove_stale_temp_files(&dir.join(&spec.root), busy);
        }
    }
    if total > 0 {
        tracing::info!(
            stream = spec.name,
            rows = total,
            "recovered rows from the write-ahead log"
        );
        metrics
            .rows_recovered
            .with_label_values(&[spec.name])
            .inc_by(total as u64);
    }
    let complete = errors.is_empty();
    if complete {
        health.set(&part, None);
    } else {
        let error = format!(
            "{}: write-ahead segments wait for recovery: {}",
            spec.name,
            errors.join("; ")
        );
        if !health.is_set(&part) {
            tracing::error!(
                stream = spec.name,
                error,
                "cannot recover the write-ahead log now; serving goes on, and recovery is retried"
            );
        }
        health.set(&part, Some(error));
    }
    Pass {
        rows: total,
        complete,
    }
}

/// A recovered Parquet file being written: `.<uuid>.parquet`, renamed when complete.
struct Recovering {
    temp_path: PathBuf,
    final_path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
}

/// Turns one leftover segment into Parquet, as far as it is valid, and sets the rest aside
/// (see the module's rules). Returns the rows written to Parquet; `Err` when something could
/// not be written, or a regular segment file could not be opened (the segment then stays where
/// it is, for a retry).
fn recover_segment<R>(
    dir: &Path,
    spec: &StreamSpec<R>,
    metrics: &LogMetrics,
    segment: &Path,
) -> Result<usize, LogError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LogError::Io { path, source }
    };
    // What is not a regular file (a folder, a FIFO, which opening would block on, a broken
    // link) can never be read: set aside. A regular file that cannot be opened now (no file
    // descriptors left, a permission fixed later) stays for the next try.
    let unreadable = |detail: String| Stop {
        reason: QuarantineReason::Unreadable,
        offset: 0,
        detail,
    };
    match fs::metadata(segment) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            let stop = unreadable("not a regular file".into());
            quarantine(dir, spec, metrics, segment, &stop, &[], 0)?;
            return Ok(0);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let stop = unreadable(format!("a link to nothing: {e}"));
            quarantine(dir, spec, metrics, segment, &stop, &[], 0)?;
            return Ok(0);
        }
        Err(e) => return Err(io(segment)(e)),
    }
    let (file, len) = File::open(segment)
        .and_then(|f| {
            let len = f.metadata()?.len();
            Ok((f, len))
        })
        .map_err(io(segment))?;
    let id = segment
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    // Row frames (predictions) decode to rows, then to the same batches the writer builds.
    let decode_rows = |payload: &[u8]| -> Result<RecordBatch, String> {
        let codec = spec.rows.as_ref().ok_or("this stream has no row frames")?;
        let rows = (codec.decode)(payload)?;
        let refs: Vec<&R> = rows.iter().collect();
        (spec.to_batch)(&refs).map_err(|e| e.to_string())
    };
    let mut reader = SegmentReader::new(BufReader::new(file), len, &spec.schema);
    if spec.rows.is_some() {
        reader = reader.with_rows(&decode_rows);
    }
    let mut out: Option<Recovering> = None;
    // The Parquet file of this segment was completed before the crash: nothing to rewrite.
    let mut done_already = false;
    let mut rows = 0usize;
    let stop = loop {
        let batch = match reader.next_batch() {
            Ok(Some(b)) if b.num_rows() == 0 => continue,
            Ok(Some(b)) => b,
            Ok(None) => break None,
            Err(stop) => break Some(stop),
        };
        if out.is_none() && !done_already {
            let Some(first_ts) = batch
                .column_by_name("ts")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                .map(|a| a.value(0))
            else {
                break Some(Stop {
                    reason: QuarantineReason::Schema,
                    offset: 0,
                    detail: "no `ts` column of microseconds".into(),
                });
            };
            let partition_dir = dir.join((spec.partition)(first_ts));
            let final_path = partition_dir.join(format!("{id}.parquet"));
            let temp_path = partition_dir.join(format!(".{id}.parquet"));
            if final_path.exists() {
                done_already = true;
            } else {
                create_dirs(&partition_dir).map_err(io(&partition_dir))?;
                let file = File::create(&temp_path).map_err(io(&temp_path))?;
                let writer = ArrowWriter::try_new(
                    BufWriter::new(file),
                    Arc::clone(&spec.schema),
                    Some(writer_properties(65_536)),
                );
                let writer = match writer {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = fs::remove_file(&temp_path);
                        return Err(LogError::Format(e.to_string()));
                    }
                };
                out = Some(Recovering {
                    temp_path,
                    final_path,
                    writer,
                });
            }
        }
        if let Some(r) = &mut out
            && let Err(e) = r.writer.write(&batch)
        {
            let _ = fs::remove_file(&r.temp_path);
            return Err(LogError::Io {
                path: r.temp_path.clone(),
                source: std::io::Error::other(e.to_string()),
            });
        }
        rows += batch.num_rows();
    };
    if !reader.dropped_columns().is_empty() {
        tracing::warn!(
            stream = spec.name,
            segment = %segment.display(),
            columns = ?reader.dropped_columns(),
            "recovered a segment with columns the current schema does not have; they are left out"
        );
    }
    let skipped = reader.skipped().to_vec();
    drop(reader);
    let written = match out {
        None => 0,
        Some(r) => {
            complete_recovered(r)?;
            rows
        }
    };
    // A segment with damaged frames is set aside whole (its bytes as found), after every frame
    // that could be read reached Parquet; the note lists what was passed over.
    match (stop, skipped.first()) {
        (None, None) => fs::remove_file(segment).map_err(io(segment))?,
        (Some(stop), _) => quarantine(dir, spec, metrics, segment, &stop, &skipped, rows)?,
        (None, Some(first)) => {
            let first = first.clone();
            quarantine(dir, spec, metrics, segment, &first, &skipped, rows)?;
        }
    }
    Ok(written)
}

/// Footer, fsync, rename, folder fsync; the temporary file is removed on failure.
fn complete_recovered(mut r: Recovering) -> Result<(), LogError> {
    let temp = r.temp_path.clone();
    let result = (|| {
        r.writer.finish().map_err(|e| LogError::Io {
            path: temp.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let inner = r.writer.inner_mut();
        inner
            .flush()
            .and_then(|()| inner.get_ref().sync_all())
            .map_err(|source| LogError::Io {
                path: temp.clone(),
                source,
            })?;
        fs::rename(&r.temp_path, &r.final_path).map_err(|source| LogError::Io {
            path: r.final_path.clone(),
            source,
        })?;
        if let Some(d) = r.final_path.parent() {
            sync_dir(d).map_err(|source| LogError::Io {
                path: d.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Moves a segment (whatever it is: file, folder, link) whole into
/// `quarantine/<wal folder>/`, with a `.json` note beside it, counts and logs it.
fn quarantine<R>(
    dir: &Path,
    spec: &StreamSpec<R>,
    metrics: &LogMetrics,
    segment: &Path,
    stop: &Stop,
    skipped: &[Stop],
    rows_kept: usize,
) -> Result<(), LogError> {
    let folder = dir.join("quarantine").join(&spec.wal);
    create_dirs(&folder).map_err(|source| LogError::Io {
        path: folder.clone(),
        source,
    })?;
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "segment".into());
    let mut target = folder.join(&name);
    let mut n = 1;
    while fs::symlink_metadata(&target).is_ok() {
        target = folder.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(segment, &target).map_err(|source| LogError::Io {
        path: segment.to_path_buf(),
        source,
    })?;
    let note = serde_json::json!({
        "segment": segment.display().to_string(),
        "reason": stop.reason.as_str(),
        "offset": stop.offset,
        "detail": stop.detail,
        "skipped_frames": skipped
            .iter()
            .map(|f| serde_json::json!({
                "reason": f.reason.as_str(),
                "offset": f.offset,
                "detail": f.detail,
            }))
            .collect::<Vec<_>>(),
        "rows_recovered": rows_kept,
        "quarantined_at": crate::time::rfc3339(crate::time::now_us()),
    });
    let mut note_path = target.clone().into_os_string();
    note_path.push(".json");
    if let Err(e) = fs::write(&note_path, format!("{note:#}\n")) {
        tracing::warn!(note = ?note_path, error = %e, "cannot write the quarantine note");
    }
    let _ = sync_dir(&folder);
    if let Some(parent) = segment.parent() {
        let _ = sync_dir(parent);
    }
    metrics
        .segments_quarantined
        .with_label_values(&[spec.name, stop.reason.as_str()])
        .inc();
    tracing::warn!(
        stream = spec.name,
        segment = %segment.display(),
        quarantined = %target.display(),
        reason = stop.reason.as_str(),
        offset = stop.offset,
        detail = %stop.detail,
        rows_recovered = rows_kept,
        "write-ahead segment set aside: its valid rows are in Parquet, its bytes in quarantine"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{FeedbackRecord, PredictionRecord, feedback_partition};
    use crate::metrics::Metrics;

    fn spec() -> StreamSpec<FeedbackRecord> {
        crate::log::feedback_stream()
    }

    /// A segment of `batches` batches of 2 labels; returns its bytes and each batch's offset.
    fn segment(batches: usize) -> (Vec<u8>, Vec<usize>) {
        let spec = spec();
        let (mut encoder, mut bytes) = SegmentEncoder::new(&spec.schema).unwrap();
        let mut starts = Vec::new();
        for b in 0..batches {
            let rows: Vec<FeedbackRecord> = (0..2)
                .map(|i| FeedbackRecord {
                    request_id: format!("r-{b}-{i}"),
                    ts_us: 1_700_000_000_000_000,
                    label: "3".into(),
                    class: 3,
                    source: "test".into(),
                })
                .collect();
            let refs: Vec<&FeedbackRecord> = rows.iter().collect();
            starts.push(bytes.len());
            encoder
                .encode(&(spec.to_batch)(&refs).unwrap(), &mut bytes)
                .unwrap();
        }
        (bytes, starts)
    }

    /// Prediction row `i` of a test: id `p-{i:05}`, all in one hour's partition.
    fn prediction_row(i: usize) -> PredictionRecord {
        PredictionRecord {
            request_id: format!("p-{i:05}"),
            model_version: Arc::from("v1"),
            predicted_label: Arc::from("3"),
            ts_us: 1_765_000_000_000_000 + i as i64,
            endpoint: crate::log::Endpoint::Classify,
            predicted_class: 3,
            confidence: 0.5,
            margin: 0.25,
            entropy: 1.0,
            probabilities: vec![0.5, 0.25, 0.25],
            embedding: Some(vec![i as f32; 4]),
            latency_us: 100,
            inference_us: 10,
            batch_size: 1,
            content_type: None,
            image: None,
            flags: vec!["low_confidence"],
            prediction_set: Some(vec![3]),
        }
    }

    /// The `request_id`s of every prediction Parquet file under `dir`, in file order (uuid v7
    /// names: the order they were opened), and how many each file holds.
    fn parquet_ids(dir: &Path) -> (Vec<String>, Vec<usize>) {
        use arrow_array::{Array, StringArray};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let mut files: Vec<PathBuf> = Vec::new();
        let mut stack = vec![dir.join("predictions")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    files.push(p);
                }
            }
        }
        files.sort(); // uuid v7 names: in the order they were opened
        let mut ids = Vec::new();
        let mut per_file = Vec::new();
        for f in &files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let before = ids.len();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch.column_by_name("request_id").unwrap();
                let col = col.as_any().downcast_ref::<StringArray>().unwrap();
                ids.extend((0..col.len()).map(|i| col.value(i).to_string()));
            }
            per_file.push(ids.len() - before);
        }
        (ids, per_file)
    }

    /// The prediction stream's row frames, through the real writer: 2,600 rows under a
    /// rotation at 1,500 cross the Parquet steps of pending rows and a rotation with rows pending;
    /// every row is acknowledged, and after the close each is in exactly one Parquet file, in
    /// order, and no segment is left.
    #[test]
    fn row_framed_predictions_reach_parquet_once_each_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::log::RawLog {
            dir: dir.path().display().to_string(),
            ..crate::log::RawLog::default()
        }
        .validate(&mut |key, e| panic!("{key}: {e}"))
        .unwrap();
        config.durability = Durability::Interval;
        config.rotate_rows = 1_500;
        config.queue_capacity = 4_096;
        let metrics = Metrics::new("m").shared.log;
        let sink = Sink::start(
            &config,
            crate::log::prediction_stream("digits"),
            metrics.clone(),
            Arc::new(LogHealth::default()),
            Arc::new(DirLock::new(dir.path())),
            true,
        );
        let n = 2_600;
        // Chunks of several sizes, each acknowledged before the next is sent: groups below
        // ROW_FRAMES_BELOW go as row frames and wait in `pending`, bigger ones as batch frames
        // after the pending rows, and the rotation comes between groups with rows pending.
        let ids: Vec<usize> = (0..n).collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        for size in [10, 30, 200, 5, 100, 1].into_iter().cycle() {
            if at == n {
                break;
            }
            let end = (at + size).min(n);
            chunks.push(&ids[at..end]);
            at = end;
        }
        for chunk in chunks {
            let acks: Vec<_> = chunk
                .iter()
                .map(|&i| match sink.append(prediction_row(i)).unwrap() {
                    Appended::Pending(rx) => rx,
                    Appended::Queued => panic!("interval durability acknowledges"),
                })
                .collect();
            for rx in acks {
                rx.blocking_recv().unwrap().unwrap();
            }
        }
        sink.close();
        let (ids, per_file) = parquet_ids(dir.path());
        let want: Vec<String> = (0..n).map(|i| format!("p-{i:05}")).collect();
        assert_eq!(ids, want, "rows per file {per_file:?}");
        assert!(per_file.len() >= 2, "a rotation: {per_file:?}");
        assert!(per_file[0] >= 1_500, "{per_file:?}");
        let wal = dir.path().join("wal/predictions/model=digits");
        let left = fs::read_dir(&wal).map_or(0, |d| d.count());
        assert_eq!(left, 0, "segments left in {}", wal.display());
        assert_eq!(
            metrics
                .rows_written
                .with_label_values(&["predictions"])
                .get(),
            n as u64
        );
    }

    fn pass(dir: &Path, metrics: &LogMetrics, health: &LogHealth) -> Pass {
        recover(dir, &spec(), metrics, health, &DirLock::new(dir), &[])
    }

    #[test]
    fn rows_left_in_the_queue_of_a_writer_that_panicked_are_answered_and_counted() {
        let metrics = Metrics::new("m").shared.log;
        let health = Arc::new(LogHealth::default());
        let (sender, receiver) = crossbeam_channel::bounded(4);
        let mut waiting = Vec::new();
        for i in 0..3 {
            let (tx, rx) = oneshot::channel();
            let row = FeedbackRecord {
                request_id: format!("r-{i}"),
                ts_us: 1,
                label: "3".into(),
                class: 3,
                source: "test".into(),
            };
            sender.send(Message::Row(row, Some(tx))).unwrap();
            waiting.push(rx);
        }
        let queue = Queue {
            receiver,
            name: "feedback",
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            part: "wal/feedback writer".into(),
        };
        let writer = std::thread::spawn(move || {
            let _queue = queue;
            panic!("a third-party encoder panicked");
        });
        assert!(writer.join().is_err());
        for mut rx in waiting {
            assert!(matches!(rx.try_recv(), Ok(Err(LogError::Unavailable(_)))));
        }
        let dropped = metrics
            .rows_dropped
            .with_label_values(&["feedback", DropReason::Closed.as_str()])
            .get();
        assert_eq!(dropped, 3);
        assert!(health.degraded().unwrap().contains("panic"));
        // And the sender now sees a closed queue, so `append` refuses at once.
        assert!(matches!(
            sender.try_send(Message::Shutdown),
            Err(TrySendError::Disconnected(_))
        ));
    }

    #[test]
    fn a_damaged_segment_whose_parquet_exists_is_quarantined_not_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = segment(3);
        bytes[starts[1] + 30] ^= 1;
        let id = "0190a000-0000-7000-8000-0000000000aa";
        let wal = tmp.path().join("wal/feedback");
        fs::create_dir_all(&wal).unwrap();
        fs::write(wal.join(format!("{id}.wal")), &bytes).unwrap();
        // The crash came after the Parquet file was complete, before the segment went.
        let partition = tmp.path().join(feedback_partition(1_700_000_000_000_000));
        fs::create_dir_all(&partition).unwrap();
        fs::write(partition.join(format!("{id}.parquet")), b"complete before").unwrap();

        let metrics = Metrics::new("m").shared.log;
        let health = LogHealth::default();
        let result = pass(tmp.path(), &metrics, &health);
        assert_eq!(
            result,
            Pass {
                rows: 0,
                complete: true
            }
        );
        assert_eq!(
            fs::read(partition.join(format!("{id}.parquet"))).unwrap(),
            b"complete before"
        );
        let quarantined = tmp.path().join(format!("quarantine/wal/feedback/{id}.wal"));
        assert_eq!(fs::read(&quarantined).unwrap(), bytes);
        let note: serde_json::Value = serde_json::from_slice(
            &fs::read(
                tmp.path()
                    .join(format!("quarantine/wal/feedback/{id}.wal.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(note["reason"], "checksum");
        assert_eq!(note["offset"], starts[1]);
        // Batches 0 and 2 read (not rewritten: the Parquet file was complete), 1 passed over.
        assert_eq!(note["rows_recovered"], 4);
        assert_eq!(note["skipped_frames"][0]["offset"], starts[1]);
        assert_eq!(
            metrics
                .segments_quarantined
                .with_label_values(&["feedback", "checksum"])
                .get(),
            1
        );
        assert_eq!(health.degraded(), None);
    }

    #[test]
    fn a_recovery_that_cannot_write_leaves_the_segment_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let (bytes, _) = segment(2);
        let wal = tmp.path().join("wal/feedback");
        fs::create_dir_all(&wal).unwrap();
        let path = wal.join("0190a000-0000-7000-8000-0000000000bb.wal");
        fs::write(&path, &bytes).unwrap();
        // The partition folder cannot be made: a file is in its way.
        let blocker = tmp.path().join("feedback");
        fs::write(&blocker, b"in the way").unwrap();

        let metrics = Metrics::new("m").shared.log;
        let health = LogHealth::default();
        assert_eq!(
            pass(tmp.path(), &metrics, &health),
            Pass {
                rows: 0,
                complete: false
            }
        );
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert!(health.degraded().unwrap().contains("recovery"));

        fs::remove_file(&blocker).unwrap();
        assert_eq!(
            pass(tmp.path(), &metrics, &health),
            Pass {
                rows: 4,
                complete: true
            }
        );
        assert!(!path.exists());
        assert_eq!(health.degraded(), None);
        assert_eq!(
            metrics
                .segments_quarantined
                .with_label_values(&["feedback", "checksum"])
                .get(),
            0
        );
    }

    /// A writer as `Sink::start` makes it, without its thread (the test drives it).
    fn writer(dir: &Path, durability: Durability) -> Writer<PredictionRecord> {
        let mut config = crate::log::RawLog {
            dir: dir.display().to_string(),
            ..crate::log::RawLog::default()
        }
        .validate(&mut |key, e| panic!("{key}: {e}"))
        .unwrap();
        config.durability = durability;
        Writer::new(
            &config,
            crate::log::prediction_stream("digits"),
            Metrics::new("m").shared.log,
            Arc::new(LogHealth::default()),
            Arc::new(DirLock::new(dir)),
            true,
        )
    }

    /// Row frames of rows `from..to`, as the writer's loop hands them over (nobody waiting).
    fn row_group(w: &mut Writer<PredictionRecord>, from: usize, to: usize) {
        w.write_row_group(
            (from..to).map(prediction_row).collect(),
            (from..to).map(|_| None).collect(),
        );
    }

    fn pending(w: &Writer<PredictionRecord>) -> usize {
        w.pending.values().map(VecDeque::len).sum()
    }

    fn in_parquet(w: &Writer<PredictionRecord>) -> usize {
        w.open.values().map(|f| f.parquet.in_progress_rows()).sum()
    }

    /// Rows wait in their segment only until `PARQUET_ROWS` of them do; then each step hands
    /// the oldest `PARQUET_STEP` to Parquet, and past `PARQUET_BACKLOG` (no idle moment for
    /// steps) all go at once. In the file they are in the order they came.
    #[test]
    fn pending_rows_reach_parquet_in_steps_oldest_first_and_at_once_past_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Durability::Interval);
        row_group(&mut w, 0, PARQUET_ROWS - 1);
        assert!(!w.parquet_step(), "fewer than PARQUET_ROWS wait");
        assert_eq!((pending(&w), in_parquet(&w)), (PARQUET_ROWS - 1, 0));

        row_group(&mut w, PARQUET_ROWS - 1, PARQUET_ROWS + 9);
        assert!(w.parquet_step());
        assert_eq!(
            (pending(&w), in_parquet(&w)),
            (PARQUET_ROWS + 9 - PARQUET_STEP, PARQUET_STEP)
        );
        assert!(!w.parquet_step(), "below PARQUET_ROWS again");

        let at = PARQUET_ROWS + 9;
        let to = at + PARQUET_BACKLOG - pending(&w);
        row_group(&mut w, at, to - 1);
        assert_eq!(
            pending(&w),
            PARQUET_BACKLOG - 1,
            "steps are the loop's, not the group's"
        );
        row_group(&mut w, to - 1, to);
        assert_eq!(
            (pending(&w), in_parquet(&w)),
            (0, to),
            "the backlog went at once"
        );

        w.close_all();
        let (ids, per_file) = parquet_ids(dir.path());
        let want: Vec<String> = (0..to).map(|i| format!("p-{i:05}")).collect();
        assert_eq!(ids, want, "rows per file {per_file:?}");
    }

    /// `interval` fsyncs go to the fsync thread and come back as the bytes the segment has on
    /// disk; a failed one abandons the file as the writer's own failed fsync does (the segment
    /// stays for recovery, the health says why), and a result for a file no longer open does
    /// nothing. The thread passes a real fsync's error on (an fsync of `/dev/null` fails).
    #[test]
    fn interval_fsyncs_run_on_their_own_thread_and_a_failed_one_abandons_the_file() {
        let wait = |w: &mut Writer<PredictionRecord>| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while w.syncer.as_ref().unwrap().in_flight > 0 {
                assert!(Instant::now() < deadline, "the fsync did not come back");
                std::thread::sleep(Duration::from_millis(5));
                w.synced();
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Durability::Interval);
        row_group(&mut w, 0, 3);
        let (partition, id) = {
            let (p, f) = w.open.iter().next().unwrap();
            (p.clone(), f.id)
        };
        let wal_of = |w: &Writer<PredictionRecord>| {
            let wal = w.open[&partition].wal.as_ref().unwrap();
            (wal.path.clone(), wal.len, wal.synced)
        };
        let (segment_path, len, synced) = wal_of(&w);
        assert!(len > synced, "written, not yet fsynced");

        // Not before the interval is up (a minute here, so that a slow machine cannot pass it).
        w.config.fsync_interval = Duration::from_secs(60);
        w.periodic(false);
        assert_eq!(w.syncer.as_ref().unwrap().in_flight, 0);
        w.config.fsync_interval = Duration::ZERO;
        w.periodic(false);
        assert_eq!(w.syncer.as_ref().unwrap().in_flight, 1);
        assert_eq!(w.dirty_since, None);
        wait(&mut w);
        assert_eq!(wal_of(&w).2, len, "the bytes sent are on disk");

        // A result for another file (one since finished) leaves this one alone.
        w.apply_sync(SyncDone {
            partition: partition.clone(),
            file: uuid::Uuid::now_v7(),
            len,
            result: Err(std::io::Error::other("an old file's disk")),
        });
        assert!(w.open.contains_key(&partition));
        assert_eq!(w.health.degraded(), None);

        w.apply_sync(SyncDone {
            partition: partition.clone(),
            file: id,
            len,
            result: Err(std::io::Error::other("the disk is gone")),
        });
        assert!(!w.open.contains_key(&partition), "abandoned");
        assert!(w.health.degraded().unwrap().contains("the disk is gone"));
        assert!(segment_path.exists(), "its segment waits for recovery");
        assert!(w.recovery.is_some());

        let mut syncer = Syncer::start("test").unwrap();
        assert!(syncer.send(SyncJob {
            partition: partition.clone(),
            file: id,
            handle: File::open("/dev/null").unwrap(),
            len: 1,
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        let done = loop {
            if let Some(done) = syncer.finished().pop() {
                break done;
            }
            assert!(Instant::now() < deadline, "the fsync did not come back");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(done.result.is_err());
        assert_eq!((done.file, done.len, syncer.in_flight), (id, 1, 0));
        syncer.stop();
    }
}
