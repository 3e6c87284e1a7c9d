//! The fuzz targets' inputs replayed in `make test`: every committed seed and every input that
//! once crashed a target (fuzz/regressions/<target>/) must now pass through it without a panic.
//! The fuzzing itself is `make fuzz` (README, "Fuzzing").

use std::path::PathBuf;

use crate::support::repo;

fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = repo().join("fuzz").join(folder).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn every_seed_and_past_crash_passes_through_its_target() {
    let mut replayed = Vec::new();
    for (target, run) in shiftwatch::fuzz::TARGETS {
        let seeds = inputs("seeds", target);
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{target} is empty (fuzz/make_seeds.py writes it)"
        );
        let crashes = inputs("regressions", target);
        for file in seeds.iter().chain(&crashes) {
            let data = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", file.display());
        }
        replayed.push(format!(
            "{target}: {} seeds, {} past crashes",
            seeds.len(),
            crashes.len()
        ));
    }
    println!("{}", replayed.join("; "));
}

#[test]
fn the_image_seeds_decode_so_the_fuzzer_starts_from_real_images() {
    for file in inputs("seeds", "image") {
        let data = std::fs::read(&file).unwrap();
        let decoded = shiftwatch::preprocess::decode(&data[1..], None, &shiftwatch::fuzz::LIMITS);
        assert!(decoded.is_ok(), "{}: {:?}", file.display(), decoded.err());
    }
}

/// The `wal_segment` seeds: segments as the log writer makes them, taken as bytes (selector
/// 0 and 1) and as their frames' payloads for the target's re-framing mode (2 and 3).
fn wal_seeds() -> Vec<(String, Vec<u8>)> {
    use std::sync::Arc;

    use shiftwatch::image_stats::InputStats;
    use shiftwatch::log::schema::{
        feedback_batch, feedback_schema, prediction_batch, prediction_schema,
    };
    use shiftwatch::log::segment::{HEADER_LEN, SegmentEncoder};
    use shiftwatch::log::{Endpoint, FeedbackRecord, ImageInfo, PredictionRecord};

    let prediction = |i: usize| PredictionRecord {
        request_id: format!("seed-{i}"),
        model_version: Arc::from("0123456789ab"),
        predicted_label: Arc::from((i % 10).to_string()),
        ts_us: 1_764_000_000_000_000 + i as i64,
        endpoint: if i.is_multiple_of(2) {
            Endpoint::Classify
        } else {
            Endpoint::Infer
        },
        predicted_class: i % 10,
        confidence: 0.9,
        margin: 0.8,
        entropy: 0.3,
        probabilities: (0..10)
            .map(|c| if c == i % 10 { 0.91 } else { 0.01 })
            .collect(),
        embedding: (!i.is_multiple_of(3)).then(|| vec![0.25; 8]),
        latency_us: 700,
        inference_us: 200,
        batch_size: 1,
        content_type: i.is_multiple_of(2).then(|| "image/png".to_string()),
        image: i.is_multiple_of(2).then(|| ImageInfo {
            bytes: 120,
            sha256: "ab".repeat(32),
            dhash: 42,
            stats: InputStats {
                width: 8,
                height: 8,
                brightness: 0.2,
                contrast: 0.3,
                sharpness: 0.4,
                saturation: 0.0,
            },
        }),
        flags: if i % 4 == 1 {
            vec!["low_confidence"]
        } else {
            Vec::new()
        },
        prediction_set: (!i.is_multiple_of(2)).then(|| vec![(i % 10) as i32, 3]),
    };
    let feedback = |i: usize| FeedbackRecord {
        request_id: format!("seed-{i}"),
        ts_us: 1_764_000_000_000_000 + i as i64,
        label: (i % 10).to_string(),
        class: i % 10,
        source: "fuzz".into(),
    };
    let predictions: Vec<PredictionRecord> = (0..5).map(prediction).collect();
    let labels: Vec<FeedbackRecord> = (0..3).map(feedback).collect();
    // Predictions: one Arrow IPC batch frame (as older versions wrote) and one row frame (as
    // the writer writes now).
    let p_batches = [prediction_batch(&predictions[..1].iter().collect::<Vec<_>>()).unwrap()];
    let f_batches = [feedback_batch(&labels.iter().collect::<Vec<_>>()).unwrap()];
    let segment = |schema: &arrow_schema::Schema, batches: &[arrow_array::RecordBatch]| {
        let (mut encoder, mut bytes) = SegmentEncoder::new(schema).unwrap();
        for b in batches {
            encoder.encode(b, &mut bytes).unwrap();
        }
        bytes
    };
    let payloads = |bytes: &[u8]| {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            if at > 0 {
                out.extend_from_slice(shiftwatch::fuzz::WAL_SEPARATOR);
            }
            out.extend_from_slice(&bytes[at + HEADER_LEN..at + HEADER_LEN + len]);
            at += HEADER_LEN + len;
        }
        out
    };
    let mut p = segment(&prediction_schema(), &p_batches);
    let mut payload = shiftwatch::log::segment::ROW_TAG.to_vec();
    shiftwatch::log::rows::encode_predictions(
        &predictions[1..].iter().collect::<Vec<_>>(),
        &mut payload,
    );
    shiftwatch::log::segment::push_frame(&payload, &mut p).unwrap();
    let f = segment(&feedback_schema(), &f_batches);
    let with = |selector: u8, bytes: &[u8]| [&[selector][..], bytes].concat();
    vec![
        ("predictions.wal".into(), with(0, &p)),
        ("feedback.wal".into(), with(1, &f)),
        ("predictions.payloads".into(), with(2, &payloads(&p))),
        ("feedback.payloads".into(), with(3, &payloads(&f))),
    ]
}

/// The committed `wal_segment` seeds are what the writer makes today and decode whole, so the
/// fuzzer starts from real segments. After a change of the segment format, rewrite them with
/// `SHIFTWATCH_WRITE_FUZZ_SEEDS=1 cargo test --test tests fuzz::wal_seeds`.
#[test]
fn wal_seeds_are_segments_the_writer_makes_today() {
    let dir = repo().join("fuzz/seeds/wal_segment");
    let seeds = wal_seeds();
    if std::env::var_os("SHIFTWATCH_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &seeds {
        let committed = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            &committed == bytes,
            "fuzz/seeds/wal_segment/{name} is not what the writer makes today: rewrite it with \
             SHIFTWATCH_WRITE_FUZZ_SEEDS=1 cargo test --test tests fuzz::wal_seeds (and when \
             the row frames' encoding changed, change segment::ROW_TAG too, so that older \
             readers pass over the new frames)"
        );
        // Either form, taken as the target takes it, is a whole segment.
        let predictions = bytes[0] & 1 == 0;
        let (schema, segment) = shiftwatch::fuzz::wal_input(bytes).unwrap();
        let rows: Option<shiftwatch::log::segment::RowDecoder<'_>> =
            predictions.then_some(&shiftwatch::log::rows::predictions_batch as _);
        let decoded = shiftwatch::log::segment::decode_segment_with(&segment, &schema, rows);
        assert!(decoded.stop.is_none(), "{name}: {:?}", decoded.stop);
        assert!(decoded.skipped.is_empty(), "{name}: {:?}", decoded.skipped);
        assert_eq!(decoded.rows(), if predictions { 5 } else { 3 }, "{name}");
    }
}
