//! Prediction-log throughput and its cost on the request path (`cargo bench --bench log_writer`).
//!
//! Rows carry 10 probabilities and a 32-d embedding (the DESIGN.md target shape). One producer
//! thread appends rows as fast as it can; the writer thread (one core) turns them into
//! write-ahead batches and zstd Parquet. Throughput = rows / (time from first append until every
//! file is closed). The request-side cost is the time `append` takes (building the record's
//! vectors included), and separately the input statistics, dHash and sha256 computed for the log
//! on a bundled 32×32 PNG. Then what answering after the write-ahead log costs: producers that
//! each wait for their row's acknowledgement before the next (as a request waits before its
//! answer), in `interval` (written to the segment) and `strict` (fsynced) mode, against `none`
//! (nothing to wait for); and the size of write-ahead frames (the schema is written once per
//! segment, a batch of one row is one small frame). Prints one line per measurement and a JSON
//! summary under runs/.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shiftwatch::image_stats::{dhash, input_stats};
use std::sync::Arc;

use shiftwatch::log::schema::{prediction_batch, prediction_schema};
use shiftwatch::log::segment::SegmentEncoder;
use shiftwatch::log::{
    Appended, Durability, Endpoint, ImageInfo, LogConfig, PredictionLog, PredictionRecord,
};
use shiftwatch::metrics::Metrics;
use shiftwatch::time::now_us;

const ROWS: usize = 500_000;
const TARGET_ROWS_PER_SECOND: f64 = 500_000.0;

fn record(
    i: usize,
    image: &ImageInfo,
    version: &Arc<str>,
    labels: &[Arc<str>],
) -> PredictionRecord {
    let mut probabilities = [0.01f32; 10];
    probabilities[i % 10] = 0.91;
    let embedding: Vec<f32> = (0..32).map(|k| ((i * 31 + k) % 97) as f32 / 97.0).collect();
    PredictionRecord {
        request_id: format!("01a2-bench-{i:08}"),
        model_version: Arc::clone(version),
        predicted_label: Arc::clone(&labels[i % 10]),
        ts_us: now_us(),
        endpoint: Endpoint::Classify,
        predicted_class: i % 10,
        confidence: 0.91,
        margin: 0.9,
        entropy: 0.5,
        probabilities: probabilities.to_vec(),
        embedding: Some(embedding),
        latency_us: 250,
        inference_us: 40,
        batch_size: 8,
        content_type: Some("image/png".into()),
        image: Some(image.clone()),
        flags: Vec::new(),
        prediction_set: Some(vec![3, 5]),
    }
}

fn config(dir: &std::path::Path, durability: Durability) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        durability,
        fsync_interval: Duration::from_millis(1000),
        queue_capacity: ROWS,
        rotate_rows: 1_000_000,
        rotate_bytes: 512 * 1024 * 1024,
        rotate_age: Duration::from_secs(3600),
        row_group_rows: 65_536,
        retention: None,
        max_disk_bytes: None,
        upload: None,
    }
}

/// `producers` threads, each appending a row and (with `wait`) waiting for its
/// acknowledgement before the next, for `per_producer` rows each; the clock stops when every
/// row is written. Without `wait` this is how interval mode answered before it waited for the
/// segment write. Returns rows/s.
fn acknowledged(
    durability: Durability,
    image: &ImageInfo,
    producers: usize,
    per_producer: usize,
    wait: bool,
) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let labels: Vec<Arc<str>> = (0..10).map(|i| Arc::from(i.to_string())).collect();
    let version: Arc<str> = Arc::from("0123456789ab");
    let metrics = Metrics::new("bench");
    let (dir_log, _) = PredictionLog::open(&config(dir.path(), durability), &metrics.shared.log);
    let (log, _) = dir_log.predictions("bench", &metrics.shared.log);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for p in 0..producers {
            let (log, labels, version) = (&log, &labels, &version);
            scope.spawn(move || {
                for i in 0..per_producer {
                    let r = record(p * per_producer + i, image, version, labels);
                    match log.append(r).expect("the queue holds every row") {
                        Appended::Pending(rx) if wait => rx
                            .blocking_recv()
                            .expect("the writer answers")
                            .expect("the row is written"),
                        Appended::Pending(_) | Appended::Queued => {}
                    }
                }
            });
        }
    });
    log.close();
    let elapsed = started.elapsed().as_secs_f64();
    dir_log.close();
    let rows = producers * per_producer;
    let rows_per_second = rows as f64 / elapsed;
    let how = if wait {
        "each waiting for its row's acknowledgement"
    } else {
        "not waiting"
    };
    println!(
        "log {durability:?}, {producers} producers {how}: \
         {rows} rows in {elapsed:.3} s = {rows_per_second:.0} rows/s ({:.1} µs per row per producer)",
        elapsed * 1e6 / per_producer as f64
    );
    rows_per_second
}

/// Bytes of write-ahead frames: the schema frame, and batch frames of 1 and 1000 rows.
fn frame_sizes(image: &ImageInfo) -> (usize, usize, f64) {
    let labels: Vec<Arc<str>> = (0..10).map(|i| Arc::from(i.to_string())).collect();
    let version: Arc<str> = Arc::from("0123456789ab");
    let rows: Vec<PredictionRecord> = (0..1000)
        .map(|i| record(i, image, &version, &labels))
        .collect();
    let (mut encoder, schema_frame) = SegmentEncoder::new(&prediction_schema()).expect("schema");
    let mut one = Vec::new();
    encoder
        .encode(&prediction_batch(&[&rows[0]]).expect("batch"), &mut one)
        .expect("frame");
    let mut many = Vec::new();
    let refs: Vec<&PredictionRecord> = rows.iter().collect();
    encoder
        .encode(&prediction_batch(&refs).expect("batch"), &mut many)
        .expect("frame");
    let per_row = many.len() as f64 / 1000.0;
    // The prediction stream's row frames (what the writer writes now), tag and frame header
    // included.
    let row_frame = |rows: &[&PredictionRecord]| {
        let mut payload = shiftwatch::log::segment::ROW_TAG.to_vec();
        shiftwatch::log::rows::encode_predictions(rows, &mut payload);
        payload.len() + shiftwatch::log::segment::HEADER_LEN
    };
    println!(
        "row frames: 1 row {} bytes, 1000 rows {:.0} bytes/row",
        row_frame(&refs[..1]),
        row_frame(&refs) as f64 / 1000.0
    );
    println!(
        "write-ahead frames: schema {} bytes (once per segment), a 1-row batch {} bytes, \
         a 1000-row batch {per_row:.0} bytes/row; a schema in every frame would make a 1-row frame {:.1}x larger",
        schema_frame.len(),
        one.len(),
        (one.len() + schema_frame.len()) as f64 / one.len() as f64
    );
    (schema_frame.len(), one.len(), per_row)
}

fn run(durability: Durability, image: &ImageInfo) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), durability);
    let labels: Vec<Arc<str>> = (0..10).map(|i| Arc::from(i.to_string())).collect();
    let version: Arc<str> = Arc::from("0123456789ab");
    let metrics = Metrics::new("bench");
    let (dir_log, _) = PredictionLog::open(&config, &metrics.shared.log);
    let (log, _) = dir_log.predictions("bench", &metrics.shared.log);
    // Build records first so the append timing is the request path's share only.
    let records: Vec<PredictionRecord> = (0..ROWS)
        .map(|i| record(i, image, &version, &labels))
        .collect();
    let started = Instant::now();
    let mut append_time = Duration::ZERO;
    for r in records {
        let t = Instant::now();
        log.append(r).expect("the queue holds every row");
        append_time += t.elapsed();
    }
    log.close();
    dir_log.close();
    let elapsed = started.elapsed().as_secs_f64();
    let written = metrics
        .shared
        .log
        .rows_written
        .with_label_values(&["predictions"])
        .get();
    assert_eq!(written as usize, ROWS, "every row written");
    let bytes: u64 = walk(dir.path());
    let rows_per_second = ROWS as f64 / elapsed;
    let append_ns = append_time.as_nanos() as f64 / ROWS as f64;
    println!(
        "log {durability:?}: {ROWS} rows in {elapsed:.3} s = {rows_per_second:.0} rows/s \
         ({:.2}x the 500k rows/s target), {:.1} MB of Parquet, append {append_ns:.0} ns/row",
        rows_per_second / TARGET_ROWS_PER_SECOND,
        bytes as f64 / 1e6,
    );
    (rows_per_second, append_ns)
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else if p.extension().is_some_and(|x| x == "parquet") {
                        e.metadata().map_or(0, |m| m.len())
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and wants it quick.
    let full = std::env::args().any(|a| a == "--bench");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let png = std::fs::read(root.join("data/traffic/normal/normal-0000.png")).expect("bundled PNG");
    let decoded = image::load_from_memory(&png).expect("decodes");

    // The log's extra preprocessing per request: input statistics, dHash, sha256.
    let n = if full { 20_000 } else { 100 };
    let t = Instant::now();
    let mut sink = 0u64;
    for _ in 0..n {
        let s = input_stats(&decoded);
        sink ^= dhash(&decoded) ^ u64::from(s.brightness.to_bits());
        sink ^= u64::from(Sha256::digest(&png)[0]);
    }
    let extras_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let time = |f: &dyn Fn() -> u64| {
        let t = Instant::now();
        let mut x = 0u64;
        for _ in 0..n {
            x ^= f();
        }
        (t.elapsed().as_nanos() as f64 / f64::from(n), x)
    };
    let (stats_ns, a) = time(&|| u64::from(input_stats(&decoded).sharpness.to_bits()));
    let (dhash_ns, b) = time(&|| dhash(&decoded));
    let (sha_ns, c) = time(&|| u64::from(Sha256::digest(&png)[0]));
    println!(
        "input statistics + dHash + sha256 of a 32x32 PNG: {extras_ns:.0} ns/request \
         (statistics {stats_ns:.0}, dHash {dhash_ns:.0}, sha256 {sha_ns:.0}) [{}]",
        sink ^ a ^ b ^ c
    );

    if !full {
        return;
    }
    let image = ImageInfo {
        bytes: png.len() as i64,
        sha256: hex::encode(Sha256::digest(&png)),
        dhash: dhash(&decoded),
        stats: input_stats(&decoded),
    };
    let (interval_rps, interval_append) = run(Durability::Interval, &image);
    let (none_rps, none_append) = run(Durability::None, &image);
    let (schema_bytes, one_row_frame_bytes, frame_bytes_per_row) = frame_sizes(&image);
    // Acknowledged rows: 64 producers stand for 64 requests in flight.
    let mut waiting = serde_json::Map::new();
    for (durability, producers, per, wait) in [
        (Durability::None, 64, 2_000, false),
        (Durability::Interval, 64, 2_000, false),
        (Durability::Interval, 64, 2_000, true),
        (Durability::Strict, 64, 200, true),
        (Durability::Interval, 1, 20_000, false),
        (Durability::Interval, 1, 20_000, true),
        (Durability::Strict, 1, 500, true),
    ] {
        let rps = acknowledged(durability, &image, producers, per, wait);
        let key = format!(
            "{durability:?}_{producers}_{}",
            if wait { "waiting" } else { "not_waiting" }
        );
        waiting.insert(key.to_lowercase(), serde_json::json!(rps));
    }
    let summary = serde_json::json!({
        "rows": ROWS,
        "interval_rows_per_second": interval_rps,
        "none_rows_per_second": none_rps,
        "target_rows_per_second": TARGET_ROWS_PER_SECOND,
        "interval_append_ns": interval_append,
        "none_append_ns": none_append,
        "image_extras_ns": extras_ns,
        "acknowledged_rows_per_second": waiting,
        "schema_frame_bytes": schema_bytes,
        "one_row_frame_bytes": one_row_frame_bytes,
        "frame_bytes_per_row": frame_bytes_per_row,
    });
    let out = root.join("runs");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("log_writer.json"), summary.to_string());
    println!("{summary}");
}
