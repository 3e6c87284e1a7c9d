//! One log stream's writer thread: queue → record batches → write-ahead segment + Parquet file.
//!
//! Rules:
//! - Each open Parquet file belongs to one partition and has one write-ahead segment with the
//!   same uuid (`wal/<stream>[/model=<name>]/<uuid>.arrows`). A batch goes to the segment first, then to the
//!   Parquet writer; it counts as written once it is in the segment (or, without a write-ahead
//!   log, in the Parquet writer).
//! - A file is written as `.<uuid>.parquet` and renamed to `<uuid>.parquet` when complete (row
//!   count, size or age reached, or shutdown), after an fsync; only then is its segment deleted.
//! - Recovery turns each leftover segment into `<partition>/<uuid>.parquet` unless that file
//!   exists already (the crash came between rename and delete), so no row is written twice.
//! - A write error abandons the open file: its segment is kept for recovery once writes work
//!   again; the rows of the failed batch that reached no segment are counted as dropped (or
//!   failed back to strict-mode callers). Health says degraded until a write succeeds.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::{RecordBatch, TimestampMicrosecondArray};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, SchemaRef};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::oneshot;

use super::{Durability, LogConfig, LogError, retention};
use crate::metrics::{DropReason, LogMetrics};

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
}

/// What `append` did with a row.
#[derive(Debug)]
pub enum Appended {
    /// Queued; it will be written (or counted as dropped).
    Queued,
    /// Strict mode: resolves once the row is durable, or with the reason it is not.
    Pending(oneshot::Receiver<Result<(), LogError>>),
}

/// Whether the log can write, shared by the writers and readiness.
#[derive(Debug, Default)]
pub struct LogHealth {
    error: Mutex<Option<String>>,
}

impl LogHealth {
    pub fn degraded(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn set(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }
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
    pub fn start(
        config: &LogConfig,
        spec: StreamSpec<R>,
        metrics: LogMetrics,
        health: Arc<LogHealth>,
    ) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let name = spec.name;
        let writer = Writer {
            properties: writer_properties(config.row_group_rows),
            config: config.clone(),
            spec,
            open: BTreeMap::new(),
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            dirty_since: None,
            orphans: Vec::new(),
            last_maintenance: Instant::now(),
            drops_reported: 0,
            last_drop_report: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || writer.run(receiver))
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
        let (ack, appended) = if self.durability == Durability::Strict {
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
    wal: Option<(PathBuf, StreamWriter<BufWriter<File>>)>,
    rows: usize,
    opened: Instant,
}

struct Writer<R> {
    config: LogConfig,
    spec: StreamSpec<R>,
    properties: WriterProperties,
    open: BTreeMap<PathBuf, OpenFile>,
    metrics: LogMetrics,
    health: Arc<LogHealth>,
    /// When the oldest write-ahead data not yet fsynced was written.
    dirty_since: Option<Instant>,
    /// Segments of abandoned files, to recover once writes work again.
    orphans: Vec<PathBuf>,
    last_maintenance: Instant,
    drops_reported: u64,
    last_drop_report: Instant,
}

/// Rows taken from the queue in one go at most (one write-ahead batch).
const MAX_GROUP: usize = 8192;
const TICK: Duration = Duration::from_millis(50);
/// How long a writer gathers rows into one batch when nobody waits for it.
const GROUP_WAIT: Duration = Duration::from_millis(20);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

impl<R> Writer<R> {
    fn run(mut self, receiver: Receiver<Message<R>>) {
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
            let deadline = Instant::now() + self.group_wait();
            while rows.len() < MAX_GROUP && !shutdown {
                let next = if rows.is_empty() {
                    break;
                } else {
                    receiver.recv_deadline(deadline)
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
        // Partition by arrival time, keeping order within each partition.
        let mut groups: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            groups
                .entry((self.spec.partition)((self.spec.ts)(r)))
                .or_default()
                .push(i);
        }
        let mut ok = vec![false; rows.len()];
        let mut touched = Vec::new();
        for (partition, idx) in groups {
            let refs: Vec<&R> = idx.iter().map(|&i| &rows[i]).collect();
            match self.append_batch(&partition, &refs) {
                Ok(()) => {
                    for i in &idx {
                        ok[*i] = true;
                    }
                    touched.push(partition);
                }
                Err((e, in_wal)) => {
                    self.fail(&partition, &e);
                    if in_wal {
                        // In an orphaned segment: recovered later, not lost.
                        for i in &idx {
                            ok[*i] = true;
                        }
                    }
                }
            }
        }
        // Durability: strict fsyncs before anyone is answered.
        let mut sync_error = None;
        if self.config.durability == Durability::Strict {
            for partition in &touched {
                if let Err(e) = self.sync_wal(partition) {
                    sync_error = Some(e.to_string());
                    self.fail(partition, &e.to_string());
                }
            }
            self.dirty_since = None;
        } else if self.config.durability == Durability::Interval && !touched.is_empty() {
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        // Health first, so that a caller answered after this write sees it.
        if ok.iter().any(|o| *o) && sync_error.is_none() && !touched.is_empty() {
            self.health.set(None);
        }
        let mut written = 0u64;
        let mut dropped = 0u64;
        for (i, ack) in acks.into_iter().enumerate() {
            let success = ok[i] && sync_error.is_none();
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
        // Size and row-count rotation right away; age rotation in `periodic`.
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

    /// Appends one batch; on error says whether the rows reached the write-ahead segment.
    fn append_batch(&mut self, partition: &Path, rows: &[&R]) -> Result<(), (String, bool)> {
        let batch = (self.spec.to_batch)(rows).map_err(|e| (e.to_string(), false))?;
        if !self.open.contains_key(partition) {
            let file = self.open_file(partition).map_err(|e| (e, false))?;
            self.open.insert(partition.to_path_buf(), file);
        }
        let file = self.open.get_mut(partition).expect("opened above");
        let mut in_wal = false;
        if let Some((_, wal)) = &mut file.wal {
            wal.write(&batch)
                .and_then(|()| wal.flush())
                .map_err(|e| (e.to_string(), false))?;
            in_wal = true;
        }
        file.parquet
            .write(&batch)
            .map_err(|e| (e.to_string(), in_wal))?;
        file.rows += batch.num_rows();
        Ok(())
    }

    fn open_file(&self, partition: &Path) -> Result<OpenFile, String> {
        let id = uuid::Uuid::now_v7();
        let dir = self.config.dir.join(partition);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let temp_path = dir.join(format!(".{id}.parquet"));
        let final_path = dir.join(format!("{id}.parquet"));
        let wal = if self.config.durability == Durability::None {
            None
        } else {
            let wal_dir = self.config.dir.join(&self.spec.wal);
            fs::create_dir_all(&wal_dir).map_err(|e| format!("{}: {e}", wal_dir.display()))?;
            let path = wal_dir.join(format!("{id}.arrows"));
            let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut writer = StreamWriter::try_new(BufWriter::new(file), &self.spec.schema)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            writer
                .flush()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Some((path, writer))
        };
        let file = File::create(&temp_path).map_err(|e| format!("{}: {e}", temp_path.display()))?;
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
            && let Some((_, wal)) = &mut file.wal
        {
            wal.get_mut().flush()?;
            wal.get_ref().get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Abandons the file of `partition` after a write error.
    fn fail(&mut self, partition: &Path, error: &str) {
        tracing::debug!(stream = self.spec.name, partition = %partition.display(), error, "log write failed");
        if self.health.degraded().is_none() {
            tracing::error!(
                stream = self.spec.name,
                error,
                "the log cannot write; rows are dropped and counted until it can"
            );
        }
        self.health.set(Some(error.to_string()));
        if let Some(file) = self.open.remove(partition) {
            let _ = fs::remove_file(&file.temp_path);
            if let Some((path, _)) = file.wal {
                self.orphans.push(path);
            }
        }
    }

    /// Completes the file of `partition`: footer, fsync, rename, then its segment goes.
    fn finish(&mut self, partition: &Path) {
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
                self.health.set(Some(e.clone()));
                tracing::error!(stream = self.spec.name, error = %e, "cannot complete a log file; its rows stay in the write-ahead log");
                if let Some(segment) = segment {
                    self.orphans.push(segment);
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
        self.retry_orphans();
    }

    fn periodic(&mut self, shutdown: bool) {
        if shutdown {
            return;
        }
        if let Some(since) = self.dirty_since
            && since.elapsed() >= self.config.fsync_interval
        {
            let partitions: Vec<PathBuf> = self.open.keys().cloned().collect();
            for p in partitions {
                if let Err(e) = self.sync_wal(&p) {
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
        if !self.orphans.is_empty() && self.health.degraded().is_none() {
            self.retry_orphans();
        }
        if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            self.last_maintenance = Instant::now();
            if !self.orphans.is_empty() {
                self.retry_orphans();
            }
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

    fn retry_orphans(&mut self) {
        let orphans = std::mem::take(&mut self.orphans);
        for segment in orphans {
            match recover_segment(&self.config.dir, &self.spec, &segment) {
                Ok(n) => {
                    tracing::info!(
                        stream = self.spec.name,
                        rows = n,
                        "recovered an abandoned log file from its write-ahead segment"
                    );
                }
                Err(e) => {
                    tracing::debug!(stream = self.spec.name, error = %e, "orphan segment not recovered yet");
                    self.orphans.push(segment);
                }
            }
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
    let segment = file.wal.as_ref().map(|(p, _)| p.clone());
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
    if let Some(dir) = file.final_path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    if let Some((path, wal)) = file.wal {
        drop(wal);
        let _ = fs::remove_file(path);
    }
    Ok(())
}

/// Turns one leftover segment into Parquet; returns the rows recovered.
pub fn recover_segment<R>(
    dir: &Path,
    spec: &StreamSpec<R>,
    segment: &Path,
) -> Result<usize, LogError> {
    let io = |e: std::io::Error| LogError::Io {
        path: segment.to_path_buf(),
        source: e,
    };
    let id = segment
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let reader = match File::open(segment).map_err(io) {
        Ok(f) => StreamReader::try_new(BufReader::new(f), None),
        Err(e) => return Err(e),
    };
    let mut batches = Vec::new();
    if let Ok(reader) = reader {
        // A crash can cut the last message short: keep every complete batch before it.
        for batch in reader {
            match batch {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        fs::remove_file(segment).map_err(io)?;
        return Ok(0);
    }
    let first_ts = batches[0]
        .column_by_name("ts")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .map(|a| a.value(0))
        .ok_or_else(|| LogError::Format(format!("{}: no ts column", segment.display())))?;
    let partition_dir = dir.join((spec.partition)(first_ts));
    let final_path = partition_dir.join(format!("{id}.parquet"));
    let temp_path = partition_dir.join(format!(".{id}.parquet"));
    if final_path.exists() {
        // Completed before the crash; only the segment's deletion was missed.
        let _ = fs::remove_file(&temp_path);
        fs::remove_file(segment).map_err(io)?;
        return Ok(0);
    }
    fs::create_dir_all(&partition_dir).map_err(io)?;
    let out = File::create(&temp_path).map_err(io)?;
    let mut writer = ArrowWriter::try_new(
        BufWriter::new(out),
        Arc::clone(&spec.schema),
        Some(writer_properties(65_536)),
    )
    .map_err(|e| LogError::Format(e.to_string()))?;
    for b in &batches {
        writer
            .write(b)
            .map_err(|e| LogError::Format(e.to_string()))?;
    }
    writer
        .finish()
        .map_err(|e| LogError::Format(e.to_string()))?;
    let inner = writer.inner_mut();
    inner.flush().map_err(io)?;
    inner.get_ref().sync_all().map_err(io)?;
    drop(writer);
    fs::rename(&temp_path, &final_path).map_err(io)?;
    if let Ok(d) = File::open(&partition_dir) {
        let _ = d.sync_all();
    }
    fs::remove_file(segment).map_err(io)?;
    Ok(rows)
}

/// Recovers every leftover segment of a stream and removes stale temporary files.
pub fn recover<R>(
    dir: &Path,
    spec: &StreamSpec<R>,
    metrics: &LogMetrics,
) -> Result<usize, LogError> {
    let wal = dir.join(&spec.wal);
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(&wal) {
        let mut segments: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "arrows"))
            .collect();
        segments.sort();
        for segment in segments {
            let n = recover_segment(dir, spec, &segment)?;
            total += n;
        }
    }
    retention::remove_stale_temp_files(&dir.join(&spec.root));
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
    Ok(total)
}
