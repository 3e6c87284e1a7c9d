//! The inference workers: one OS thread per ONNX Runtime session, fed by one bounded queue.
//!
//! A worker takes the first waiting image, then whatever else is queued (up to `max_batch`,
//! waiting at most `max_batch_delay` for more), runs them as one batch and answers each caller
//! through its own channel. Sessions never run on the async runtime's threads, and
//! `Session::run` (`&mut self`) is never shared: each session belongs to one thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use ort::session::Session;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::model::{LoadedModel, ModelSpec, RawOutput, run_batch};
use crate::relabel::ood::Proximity;

/// A count in the config that may be left to shiftwatch: a number, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCount {
    Auto,
    Fixed(usize),
}

impl AutoCount {
    /// Reports a number outside `1..=most` under `key`; returns the count with such a number
    /// clamped into the range.
    pub fn checked(self, key: &str, most: usize, bad: &mut dyn FnMut(&str, String)) -> Self {
        match self {
            AutoCount::Fixed(n) if !(1..=most).contains(&n) => {
                bad(key, format!("{n} is outside 1..={most} (or \"auto\")"));
                AutoCount::Fixed(n.clamp(1, most))
            }
            count => count,
        }
    }
}

/// How many sessions a model gets: a number, or `"auto"`, decided when the model loads from
/// what one image's run costs (see [`crate::model::load`]).
pub type Sessions = AutoCount;

impl Serialize for AutoCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AutoCount::Auto => s.serialize_str("auto"),
            AutoCount::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for AutoCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = AutoCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AutoCount, E> {
                Ok(AutoCount::Fixed(usize::try_from(v).unwrap_or(usize::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AutoCount, E> {
                usize::try_from(v)
                    .map(AutoCount::Fixed)
                    .map_err(|_| E::custom(format!("{v} is below 1 (give a number or \"auto\")")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AutoCount, E> {
                if v == "auto" {
                    Ok(AutoCount::Auto)
                } else {
                    Err(E::custom(format!("`{v}` is neither a number nor \"auto\"")))
                }
            }
        }
        d.deserialize_any(Visit)
    }
}

/// `[inference]`: sessions, threads and batching.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawInference {
    pub sessions: Sessions,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub max_batch: MaxBatch,
    pub max_batch_delay_us: u64,
    pub max_in_flight: usize,
}

/// The largest batch one run takes: a number, or `"auto"`, decided when the model loads
/// ([`MaxBatch::resolve`]).
pub type MaxBatch = AutoCount;

/// `max_batch = "auto"` for a light model, on a GPU, and in offline batch jobs (profile,
/// accuracy): batches amortize a run's fixed cost (one digits image 6.3 µs a run, 0.53 µs an
/// image in a batch of 8).
pub const AUTO_MAX_BATCH: usize = 32;

impl MaxBatch {
    /// The batch limit for a model whose one-image run on CPU took `cpu_run` (`None`: not
    /// timed, or not on CPU). A compute-heavy model on CPU (at least
    /// [`crate::model::AUTO_SESSIONS_MIN_RUN`], where `sessions = "auto"` opens one session per
    /// core) runs one image at a time: a session of one thread runs a batch's images one after
    /// another anyway, so a batch only holds its first answers back and leaves the other
    /// sessions less to do (on two cores, `max_batch` 1 against 32: 0.81–0.85 against
    /// 0.77–0.79 of bare ONNX Runtime on pre-made tensors, p99 24–25 against 36–40 ms;
    /// README, performance).
    pub fn resolve(self, cpu_run: Option<Duration>) -> usize {
        match self {
            AutoCount::Fixed(n) => n,
            AutoCount::Auto
                if cpu_run.is_some_and(|r| r >= crate::model::AUTO_SESSIONS_MIN_RUN) =>
            {
                1
            }
            AutoCount::Auto => AUTO_MAX_BATCH,
        }
    }

    /// The limit where no run is timed (offline batch jobs): a number as given, `"auto"` as
    /// [`AUTO_MAX_BATCH`].
    pub fn or_default(self) -> usize {
        self.resolve(None)
    }
}

impl Default for RawInference {
    fn default() -> Self {
        RawInference {
            sessions: Sessions::Auto,
            intra_threads: 1,
            inter_threads: 1,
            max_batch: MaxBatch::Auto,
            max_batch_delay_us: 0,
            max_in_flight: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InferenceConfig {
    pub sessions: Sessions,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub max_batch: MaxBatch,
    pub max_batch_delay: Duration,
    pub max_in_flight: usize,
}

impl RawInference {
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> InferenceConfig {
        let sessions = self.sessions.checked("inference.sessions", 64, bad);
        let max_batch = self.max_batch.checked("inference.max_batch", 4096, bad);
        for (key, v, lo, hi) in [
            ("inference.intra_threads", self.intra_threads, 1, 256),
            ("inference.inter_threads", self.inter_threads, 1, 256),
            ("inference.max_in_flight", self.max_in_flight, 1, 1_000_000),
        ] {
            if v < lo || v > hi {
                bad(key, format!("{v} is outside {lo}..={hi}"));
            }
        }
        if self.max_batch_delay_us > 1_000_000 {
            bad(
                "inference.max_batch_delay_us",
                "must be at most 1000000 (one second)".into(),
            );
        }
        InferenceConfig {
            sessions,
            intra_threads: self.intra_threads,
            inter_threads: self.inter_threads,
            max_batch,
            max_batch_delay: Duration::from_micros(self.max_batch_delay_us),
            max_in_flight: self.max_in_flight,
        }
    }
}

impl InferenceConfig {
    /// The batch limit for a model whose input allows `model_max` images and whose one-image
    /// run on CPU took `cpu_run` ([`MaxBatch::resolve`]), at least one.
    pub fn batch_limit(&self, cpu_run: Option<Duration>, model_max: usize) -> usize {
        self.max_batch.resolve(cpu_run).min(model_max).max(1)
    }

    /// The batch an offline job (profile, accuracy) runs: `max_batch` as given, `"auto"` as
    /// [`AUTO_MAX_BATCH`], within what the model's input allows (`model_max`).
    pub fn offline_batch(&self, model_max: usize) -> usize {
        self.batch_limit(None, model_max)
    }
}

/// Why an image got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    #[error("the inference queue is full")]
    QueueFull,
    #[error("the inference workers have stopped")]
    Closed,
    #[error("inference failed: {0}")]
    Failed(String),
}

/// One image's result and how it was computed.
#[derive(Debug, Clone)]
pub struct Inferred {
    pub output: RawOutput,
    /// The reference search the job asked for ([`Post`]), done on the inference thread; `None`
    /// when it asked for none, or when it panicked (the prediction then has no score, as
    /// without a detector).
    pub proximity: Option<Proximity>,
    /// How many images shared the batch.
    pub batch_size: usize,
    /// Time inside ONNX Runtime for the whole batch.
    pub inference: Duration,
    /// Time spent waiting in the queue.
    pub queued: Duration,
}

/// One queued image's result, once its batch has run.
pub type Pending = oneshot::Receiver<Result<Inferred, InferenceError>>;

/// Work on one image's output that the inference thread does before it replies: the search of
/// the reference for the out-of-distribution score and the correctness model
/// (`service::Version::submit`). At 8 connections on 2 cores the request threads are the bound
/// and the inference thread has CPU to spare: done there, the search took 8 µs a request off
/// the request thread and gave 19% more requests a second (README, performance).
pub type Post = Box<dyn FnOnce(&RawOutput) -> Proximity + Send>;

struct Job {
    input: Vec<f32>,
    post: Option<Post>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Inferred, InferenceError>>,
}

/// The running workers and the queue in front of them.
pub struct InferencePool {
    spec: Arc<ModelSpec>,
    sender: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    capacity: usize,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePool")
            .field("model", &self.spec.name)
            .field("queue_depth", &self.queue_depth())
            .finish()
    }
}

impl InferencePool {
    /// Starts one worker per session; the queue holds at most `queue_capacity` images.
    pub fn start(
        model: LoadedModel,
        config: &InferenceConfig,
        queue_capacity: usize,
        metrics: BatchMetrics,
    ) -> Self {
        let spec = Arc::new(model.spec);
        let max_batch = model.max_batch;
        let capacity = queue_capacity.max(1);
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        let workers = model
            .sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let worker = Worker {
                    session,
                    spec: Arc::clone(&spec),
                    receiver: receiver.clone(),
                    max_batch,
                    max_delay: config.max_batch_delay,
                    metrics: metrics.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || worker.run())
                    .expect("spawning an inference thread")
            })
            .collect();
        InferencePool {
            spec,
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
            capacity,
        }
    }

    pub fn spec(&self) -> &Arc<ModelSpec> {
        &self.spec
    }

    /// Queues one preprocessed image; the receiver yields its result.
    pub fn submit(&self, input: Vec<f32>, post: Option<Post>) -> Result<Pending, InferenceError> {
        debug_assert_eq!(input.len(), self.spec.preprocess.tensor_len());
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            input,
            post,
            enqueued: Instant::now(),
            reply,
        };
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = sender.as_ref().ok_or(InferenceError::Closed)?;
        match sender.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(InferenceError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(InferenceError::Closed),
        }
    }

    /// The most images the queue holds: a request of more could never be queued whole.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Images waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        sender.as_ref().map_or(0, Sender::len)
    }

    /// Stops taking work, lets the workers finish what is queued, and joins them.
    /// Later submissions get [`InferenceError::Closed`].
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let workers: Vec<_> = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for worker in workers {
            if worker.join().is_err() {
                tracing::error!("an inference worker panicked");
            }
        }
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Per-batch metrics the workers record.
#[derive(Clone)]
pub struct BatchMetrics {
    pub inference_duration: prometheus::Histogram,
    pub batch_size: prometheus::Histogram,
}

struct Worker {
    metrics: BatchMetrics,
    session: Session,
    spec: Arc<ModelSpec>,
    receiver: Receiver<Job>,
    max_batch: usize,
    max_delay: Duration,
}

impl Worker {
    fn run(mut self) {
        let per_image = self.spec.preprocess.tensor_len();
        let mut jobs: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut input: Vec<f32> = Vec::with_capacity(self.max_batch * per_image);
        while let Ok(first) = self.receiver.recv() {
            jobs.push(first);
            self.fill(&mut jobs);
            // A caller that went away (client disconnected) needs no result.
            jobs.retain(|j| !j.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            // A batch of one runs on its job's own tensor; a larger one is gathered.
            let batch: &[f32] = if let [job] = jobs.as_slice() {
                &job.input
            } else {
                input.clear();
                for job in &jobs {
                    input.extend_from_slice(&job.input);
                }
                &input
            };
            let started = Instant::now();
            let n = jobs.len();
            let result = catch_unwind(AssertUnwindSafe(|| {
                run_batch(&mut self.session, &self.spec, batch, n)
            }));
            let inference = started.elapsed();
            self.metrics
                .inference_duration
                .observe(inference.as_secs_f64());
            self.metrics.batch_size.observe(n as f64);
            match result {
                Ok(Ok(outputs)) => {
                    for (job, output) in jobs.drain(..).zip(outputs) {
                        let queued = started.saturating_duration_since(job.enqueued);
                        let proximity = job
                            .post
                            .and_then(|f| catch_unwind(AssertUnwindSafe(|| f(&output))).ok());
                        let _ = job.reply.send(Ok(Inferred {
                            output,
                            proximity,
                            batch_size: n,
                            inference,
                            queued,
                        }));
                    }
                }
                Ok(Err(e)) => self.fail(&mut jobs, e.to_string()),
                Err(_) => self.fail(&mut jobs, "onnx runtime panicked".to_string()),
            }
        }
    }

    /// Adds queued jobs to the batch, waiting at most `max_delay` for more.
    fn fill(&self, jobs: &mut Vec<Job>) {
        let deadline = Instant::now() + self.max_delay;
        while jobs.len() < self.max_batch {
            match self.receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) if self.max_delay.is_zero() => return,
                Err(TryRecvError::Empty) => match self.receiver.recv_deadline(deadline) {
                    Ok(job) => jobs.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
                },
            }
        }
    }

    fn fail(&self, jobs: &mut Vec<Job>, message: String) {
        tracing::error!(error = %message, batch = jobs.len(), "inference failed");
        for job in jobs.drain(..) {
            let _ = job.reply.send(Err(InferenceError::Failed(message.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AUTO_MAX_BATCH, MaxBatch};
    use crate::model::AUTO_SESSIONS_MIN_RUN;
    use std::time::Duration;

    #[test]
    fn auto_max_batch_runs_a_heavy_cpu_model_one_image_at_a_time() {
        let us = Duration::from_micros;
        // Not timed (a GPU, or an offline job): the light default.
        assert_eq!(MaxBatch::Auto.resolve(None), AUTO_MAX_BATCH);
        assert_eq!(MaxBatch::Auto.or_default(), AUTO_MAX_BATCH);
        // Light on CPU: batches amortize the run's fixed cost.
        assert_eq!(MaxBatch::Auto.resolve(Some(us(6))), AUTO_MAX_BATCH);
        let just_under = AUTO_SESSIONS_MIN_RUN - us(1);
        assert_eq!(MaxBatch::Auto.resolve(Some(just_under)), AUTO_MAX_BATCH);
        // Heavy on CPU: one image a run, from the same threshold as the sessions.
        assert_eq!(MaxBatch::Auto.resolve(Some(AUTO_SESSIONS_MIN_RUN)), 1);
        assert_eq!(MaxBatch::Auto.resolve(Some(us(4_900))), 1);
        // A number is taken as given.
        assert_eq!(MaxBatch::Fixed(8).resolve(Some(us(4_900))), 8);
        assert_eq!(MaxBatch::Fixed(8).or_default(), 8);
    }
}
