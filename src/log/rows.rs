//! The row frames of the prediction stream's write-ahead segments: predictions encoded as they
//! are, little-endian, instead of as an Arrow IPC batch.
//!
//! The writer answers a request once its row is in the segment, and a group of rows is a few
//! rows at 8 connections. Building an Arrow batch of those few rows and encoding it as an IPC
//! message cost the writer about 32 µs a group (a probe build: 11 µs the batch, 21 µs the frame
//! and its `write(2)`), and each Parquet write of such a group 13 µs more. A row frame is a
//! few hundred bytes written as they come; the Parquet batches are built from hundreds of rows
//! at once (`sink`), and recovery turns the decoded rows into the same batches
//! (`SegmentReader::with_rows`).
//!
//! A payload (after [`super::segment::ROW_TAG`]) is the number of rows (u32), then each row:
//!
//! ```text
//! request_id, model_version, predicted_label: str | ts_us: i64 | endpoint: u8
//! predicted_class: u64 | confidence, margin, entropy: f32 | probabilities: [f32]
//! embedding: opt [f32] | latency_us, inference_us: i64 | batch_size: i32
//! content_type: opt str | image: opt (bytes: i64, sha256: str, dhash: u64, width, height: u32,
//!   brightness, contrast, sharpness, saturation: f32) | flags: [str] | prediction_set: opt [i32]
//! ```
//!
//! where `str` is a u32 length and UTF-8 bytes, `[T]` a u32 count and the values, `opt` a byte
//! 0 or 1 and then the value. Decoding is total and bounded: every length is checked against
//! the bytes left before anything is allocated, and the rows' vector grows as rows decode
//! rather than being reserved from a count that could lie. A flag this version does not know
//! (a segment of a newer version, recovered after a rollback) is left out of its row rather
//! than costing the frame's rows.
//!
//! Any change to this encoding must change [`super::segment::ROW_TAG`], so that an older reader
//! passes over the new frames instead of misreading them; the committed fuzz seeds
//! (`fuzz::wal_seeds_are_segments_the_writer_makes_today`) fail on a changed encoding.

use std::sync::Arc;

use super::{Endpoint, ImageInfo, PredictionRecord};
use crate::image_stats::InputStats;
use crate::prediction::Flag;

/// Appends the payload of a row frame holding `rows` (without its tag) to `out`.
pub fn encode_predictions(rows: &[&PredictionRecord], out: &mut Vec<u8>) {
    put_u32(out, rows.len() as u32);
    for r in rows {
        put_str(out, &r.request_id);
        put_str(out, &r.model_version);
        put_str(out, &r.predicted_label);
        out.extend_from_slice(&r.ts_us.to_le_bytes());
        out.push(match r.endpoint {
            Endpoint::Classify => 0,
            Endpoint::Infer => 1,
        });
        out.extend_from_slice(&(r.predicted_class as u64).to_le_bytes());
        for v in [r.confidence, r.margin, r.entropy] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_f32s(out, &r.probabilities);
        match &r.embedding {
            None => out.push(0),
            Some(e) => {
                out.push(1);
                put_f32s(out, e);
            }
        }
        out.extend_from_slice(&r.latency_us.to_le_bytes());
        out.extend_from_slice(&r.inference_us.to_le_bytes());
        out.extend_from_slice(&r.batch_size.to_le_bytes());
        put_opt_str(out, r.content_type.as_deref());
        match &r.image {
            None => out.push(0),
            Some(i) => {
                out.push(1);
                out.extend_from_slice(&i.bytes.to_le_bytes());
                put_str(out, &i.sha256);
                out.extend_from_slice(&i.dhash.to_le_bytes());
                put_u32(out, i.stats.width);
                put_u32(out, i.stats.height);
                for v in [
                    i.stats.brightness,
                    i.stats.contrast,
                    i.stats.sharpness,
                    i.stats.saturation,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        put_u32(out, r.flags.len() as u32);
        for f in &r.flags {
            put_str(out, f);
        }
        match &r.prediction_set {
            None => out.push(0),
            Some(set) => {
                out.push(1);
                put_u32(out, set.len() as u32);
                for c in set {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
        }
    }
}

/// The rows of a row frame's payload (without its tag), or why it is not one.
pub fn decode_predictions(payload: &[u8]) -> Result<Vec<PredictionRecord>, String> {
    let mut c = Cursor { bytes: payload };
    let n = c.u32()? as usize;
    // Every row takes more than 64 bytes: a count beyond that is a lie, refused before any
    // allocation.
    if n > payload.len() / 64 {
        return Err(format!("{n} rows cannot fit in {} bytes", payload.len()));
    }
    let mut rows = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let request_id = c.string()?;
        let model_version: Arc<str> = c.str()?.into();
        let predicted_label: Arc<str> = c.str()?.into();
        let ts_us = c.i64()?;
        let endpoint = match c.u8()? {
            0 => Endpoint::Classify,
            1 => Endpoint::Infer,
            e => return Err(format!("unknown endpoint {e}")),
        };
        let predicted_class = usize::try_from(c.u64()?)
            .map_err(|_| "the predicted class does not fit this machine".to_string())?;
        let (confidence, margin, entropy) = (c.f32()?, c.f32()?, c.f32()?);
        let probabilities = c.f32s()?;
        let embedding = if c.flag()? { Some(c.f32s()?) } else { None };
        let latency_us = c.i64()?;
        let inference_us = c.i64()?;
        let batch_size = c.i32()?;
        let content_type = if c.flag()? { Some(c.string()?) } else { None };
        let image = if c.flag()? {
            Some(ImageInfo {
                bytes: c.i64()?,
                sha256: c.string()?,
                dhash: c.u64()?,
                stats: InputStats {
                    width: c.u32()?,
                    height: c.u32()?,
                    brightness: c.f32()?,
                    contrast: c.f32()?,
                    sharpness: c.f32()?,
                    saturation: c.f32()?,
                },
            })
        } else {
            None
        };
        let flag_count = c.count(4)?;
        let mut flags = Vec::new();
        for _ in 0..flag_count {
            if let Some(flag) = Flag::parse(c.str()?) {
                flags.push(flag.as_str());
            }
        }
        let prediction_set = if c.flag()? {
            let m = c.count(4)?;
            let mut set = Vec::with_capacity(m);
            for _ in 0..m {
                set.push(c.i32()?);
            }
            Some(set)
        } else {
            None
        };
        rows.push(PredictionRecord {
            request_id,
            model_version,
            predicted_label,
            ts_us,
            endpoint,
            predicted_class,
            confidence,
            margin,
            entropy,
            probabilities,
            embedding,
            latency_us,
            inference_us,
            batch_size,
            content_type,
            image,
            flags,
            prediction_set,
        });
    }
    if !c.bytes.is_empty() {
        return Err(format!("{} bytes after the last row", c.bytes.len()));
    }
    Ok(rows)
}

/// A row frame's payload as the batch recovery writes to Parquet (the prediction schema).
pub fn predictions_batch(payload: &[u8]) -> Result<arrow_array::RecordBatch, String> {
    let rows = decode_predictions(payload)?;
    let refs: Vec<&PredictionRecord> = rows.iter().collect();
    super::schema::prediction_batch(&refs).map_err(|e| e.to_string())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    put_u32(out, values.len() as u32);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads a payload front to back; every read is checked against the bytes left.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!(
                "the payload ends early: {n} bytes wanted, {} left",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("{b} where 0 or 1 was expected")),
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `size` bytes each, no more than the bytes left can hold.
    fn count(&mut self, size: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.bytes.len() / size {
            return Err(format!(
                "{n} items cannot fit in the {} bytes left",
                self.bytes.len()
            ));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_string)
    }

    fn f32s(&mut self) -> Result<Vec<f32>, String> {
        let n = self.count(4)?;
        let bytes = self.take(n * 4)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::random::SplitMix64;

    fn full() -> PredictionRecord {
        PredictionRecord {
            request_id: "req-é-1".into(),
            model_version: Arc::from("v2"),
            predicted_label: Arc::from("seven"),
            ts_us: 1_765_000_000_123_456,
            endpoint: Endpoint::Classify,
            predicted_class: 7,
            confidence: 0.875,
            margin: f32::NAN,
            entropy: -0.0,
            probabilities: vec![0.1, f32::INFINITY, 1e-42, 0.875],
            embedding: Some(vec![1.5; 32]),
            latency_us: 321,
            inference_us: 12,
            batch_size: 3,
            content_type: Some("image/png".into()),
            image: Some(ImageInfo {
                bytes: 1234,
                sha256: "ab".repeat(32),
                dhash: u64::MAX,
                stats: InputStats {
                    width: 28,
                    height: 32,
                    brightness: 0.5,
                    contrast: f32::NEG_INFINITY,
                    sharpness: 3.25,
                    saturation: 0.0,
                },
            }),
            flags: vec![
                "low_confidence",
                "ood_suspect",
                "calibrated",
                "shifted_window",
            ],
            prediction_set: Some(vec![7, 1, -3]),
        }
    }

    fn bare() -> PredictionRecord {
        PredictionRecord {
            request_id: String::new(),
            model_version: Arc::from(""),
            predicted_label: Arc::from("x"),
            ts_us: -5,
            endpoint: Endpoint::Infer,
            predicted_class: 0,
            confidence: 1.0,
            margin: 0.0,
            entropy: 0.0,
            probabilities: vec![],
            embedding: None,
            latency_us: 0,
            inference_us: 0,
            batch_size: 1,
            content_type: None,
            image: None,
            flags: vec![],
            prediction_set: None,
        }
    }

    /// Bit for bit, floats included: NaN, infinities, −0 and subnormals come back as they went.
    fn same(a: &PredictionRecord, b: &PredictionRecord) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let floats = |r: &PredictionRecord| {
            let mut v = vec![r.confidence, r.margin, r.entropy];
            v.extend(&r.probabilities);
            v.extend(r.embedding.iter().flatten());
            if let Some(i) = &r.image {
                let s = &i.stats;
                v.extend([s.brightness, s.contrast, s.sharpness, s.saturation]);
            }
            bits(&v)
        };
        let mut x = a.clone();
        let mut y = b.clone();
        for r in [&mut x, &mut y] {
            r.confidence = 0.0;
            r.margin = 0.0;
            r.entropy = 0.0;
            r.probabilities.clear();
            r.embedding = r.embedding.as_ref().map(|_| vec![]);
            if let Some(i) = &mut r.image {
                i.stats.brightness = 0.0;
                i.stats.contrast = 0.0;
                i.stats.sharpness = 0.0;
                i.stats.saturation = 0.0;
            }
        }
        floats(a) == floats(b) && x == y
    }

    #[test]
    fn rows_come_back_bit_for_bit() {
        let rows = [full(), bare(), full()];
        let refs: Vec<&PredictionRecord> = rows.iter().collect();
        let mut payload = Vec::new();
        encode_predictions(&refs, &mut payload);
        let back = decode_predictions(&payload).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in rows.iter().zip(&back) {
            assert!(same(a, b), "{a:?}\n{b:?}");
        }
        let mut empty = Vec::new();
        encode_predictions(&[], &mut empty);
        assert!(decode_predictions(&empty).unwrap().is_empty());
    }

    /// Every cut, every flipped byte and random bytes: an error or rows, never a panic, and no
    /// allocation beyond what the bytes can hold (a huge count is refused first).
    #[test]
    fn damaged_payloads_are_refused_never_a_panic() {
        let rows = [full(), bare()];
        let refs: Vec<&PredictionRecord> = rows.iter().collect();
        let mut payload = Vec::new();
        encode_predictions(&refs, &mut payload);
        for cut in 0..payload.len() {
            assert!(decode_predictions(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = payload.clone();
        extra.push(0);
        assert!(decode_predictions(&extra).is_err());
        let mut rng = SplitMix64::new(11);
        for i in 0..payload.len() {
            let mut bad = payload.clone();
            bad[i] ^= 1 << rng.below(8);
            let _ = decode_predictions(&bad);
        }
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = decode_predictions(&bytes);
        }
        // A count of 2^32 − 1 strings of 2^32 − 1 bytes each.
        assert!(decode_predictions(&[0xff; 16]).is_err());
        // A flag this version does not know is left out; the row and its other flags stay.
        let mut r = bare();
        r.flags = vec!["from_a_newer_version", "ood_suspect"];
        let mut payload = Vec::new();
        encode_predictions(&[&r], &mut payload);
        let back = decode_predictions(&payload).unwrap();
        assert_eq!(back[0].flags, ["ood_suspect"]);
        assert_eq!(back[0].request_id, r.request_id);
    }
}
