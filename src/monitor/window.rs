//! The window: the last N predictions (and, when set, none older than T), in arrival order.
//!
//! Fixed memory: every field lives in a ring of `capacity` slots allocated once; pushing
//! overwrites the oldest slot. Evaluation copies a snapshot out under the lock and computes on
//! the copy, so the request path only ever waits for a copy of plain arrays.

/// Input statistics kept per prediction, in this order.
pub const INPUT_FEATURES: [&str; 6] = [
    "brightness",
    "contrast",
    "sharpness",
    "saturation",
    "width",
    "height",
];

/// One prediction as the monitor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<'a> {
    pub ts_us: i64,
    pub class: usize,
    pub confidence: f32,
    pub entropy: f32,
    pub probabilities: &'a [f32],
    /// NaN where unknown (tensor inputs have no image).
    pub inputs: [f32; 6],
    pub embedding: Option<&'a [f32]>,
    /// The size of the conformal prediction set; NaN when sets are off.
    pub set_size: f32,
    /// The correctness model's probability that the prediction is right; NaN without one.
    pub correct: f32,
}

/// A copy of the window's contents, oldest first. Serialized as the saved window (JSON, where an
/// unknown input statistic is `null`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowData {
    pub len: usize,
    pub classes: usize,
    pub embedding_dim: usize,
    pub ts_us: Vec<i64>,
    pub class: Vec<u32>,
    pub confidence: Vec<f32>,
    pub entropy: Vec<f32>,
    /// Row-major, `classes` per prediction.
    pub probabilities: Vec<f32>,
    /// Row-major, 6 per prediction (see [`INPUT_FEATURES`]); NaN where unknown.
    #[serde(with = "nan_as_null")]
    pub inputs: Vec<f32>,
    /// Row-major, `embedding_dim` per prediction; only rows with `has_embedding`.
    pub embeddings: Vec<f32>,
    /// Prediction set size per prediction, NaN where none (a window saved before sets existed
    /// has none: empty).
    #[serde(with = "nan_as_null", default)]
    pub set_size: Vec<f32>,
    /// The correctness model's probability per prediction, NaN where none (a window saved
    /// before the model existed has none: empty).
    #[serde(with = "nan_as_null", default)]
    pub correct: Vec<f32>,
}

/// JSON has no NaN: unknown values are written as `null` and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(values: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<Option<f32>> = values.iter().map(|v| v.is_finite().then_some(*v)).collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let v = Vec::<Option<f32>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f32::NAN)).collect())
    }
}

impl WindowData {
    /// Whether every column has `len` rows (a saved window from disk may not).
    pub fn is_consistent(&self) -> bool {
        let n = self.len;
        self.ts_us.len() == n
            && self.class.len() == n
            && self.confidence.len() == n
            && self.entropy.len() == n
            && self.probabilities.len() == n * self.classes
            && self.inputs.len() == n * 6
            && (self.set_size.is_empty() || self.set_size.len() == n)
            && (self.correct.is_empty() || self.correct.len() == n)
    }

    /// The set size of row `i` (NaN when unknown).
    pub fn set_size(&self, i: usize) -> f32 {
        self.set_size.get(i).copied().unwrap_or(f32::NAN)
    }

    /// Row `i`'s correctness probability, NaN where none.
    pub fn correct(&self, i: usize) -> f32 {
        self.correct.get(i).copied().unwrap_or(f32::NAN)
    }

    /// Whether every row has an embedding (so row `i`'s is at `i * embedding_dim`).
    pub fn all_embedded(&self) -> bool {
        self.embedding_dim > 0 && self.embeddings.len() == self.len * self.embedding_dim
    }
}

/// The rows pushed since a reader last looked ([`Window::since`]).
#[derive(Debug, Clone, Default)]
pub struct Fresh {
    /// The new rows still in the window, oldest first.
    pub data: WindowData,
    /// Rows pushed so far, ever: the reader's next `seen`.
    pub pushed: u64,
    /// New rows that were overwritten before the reader looked.
    pub skipped: u64,
}

#[derive(Debug, Clone)]
pub struct Window {
    capacity: usize,
    classes: usize,
    embedding_dim: usize,
    /// Next slot to write.
    head: usize,
    len: usize,
    ts_us: Vec<i64>,
    class: Vec<u32>,
    confidence: Vec<f32>,
    entropy: Vec<f32>,
    probabilities: Vec<f32>,
    inputs: Vec<f32>,
    embeddings: Vec<f32>,
    has_embedding: Vec<bool>,
    set_size: Vec<f32>,
    correct: Vec<f32>,
    /// Rows pushed since the window was made.
    pushed: u64,
}

impl Window {
    pub fn new(capacity: usize, classes: usize, embedding_dim: usize) -> Self {
        let capacity = capacity.max(1);
        Window {
            capacity,
            classes,
            embedding_dim,
            head: 0,
            len: 0,
            ts_us: vec![0; capacity],
            class: vec![0; capacity],
            confidence: vec![0.0; capacity],
            entropy: vec![0.0; capacity],
            probabilities: vec![0.0; capacity * classes],
            inputs: vec![f32::NAN; capacity * 6],
            embeddings: vec![0.0; capacity * embedding_dim],
            has_embedding: vec![false; capacity],
            set_size: vec![f32::NAN; capacity],
            correct: vec![f32::NAN; capacity],
            pushed: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a prediction, overwriting the oldest when full. Wrong-sized vectors are ignored
    /// field by field (they cannot come from the model the window was made for).
    pub fn push(&mut self, o: &Observation<'_>) {
        let i = self.head;
        self.ts_us[i] = o.ts_us;
        self.class[i] = o.class as u32;
        self.confidence[i] = o.confidence;
        self.entropy[i] = o.entropy;
        if o.probabilities.len() == self.classes {
            self.probabilities[i * self.classes..(i + 1) * self.classes]
                .copy_from_slice(o.probabilities);
        }
        self.inputs[i * 6..(i + 1) * 6].copy_from_slice(&o.inputs);
        match o.embedding {
            Some(e) if e.len() == self.embedding_dim && self.embedding_dim > 0 => {
                self.embeddings[i * self.embedding_dim..(i + 1) * self.embedding_dim]
                    .copy_from_slice(e);
                self.has_embedding[i] = true;
            }
            _ => self.has_embedding[i] = false,
        }
        self.set_size[i] = o.set_size;
        self.correct[i] = o.correct;
        self.head = (self.head + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
        self.pushed += 1;
    }

    /// Slot indices from oldest to newest.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let start = (self.head + self.capacity - self.len) % self.capacity;
        (0..self.len).map(move |k| (start + k) % self.capacity)
    }

    /// Copies out the rows pushed after the first `seen`, oldest first (as many as the window
    /// still holds).
    pub fn since(&self, seen: u64) -> Fresh {
        let new = self.pushed.saturating_sub(seen);
        let kept = new.min(self.len as u64) as usize;
        let skip = self.len - kept;
        Fresh {
            data: self.copy(self.order().skip(skip)),
            pushed: self.pushed,
            skipped: new - kept as u64,
        }
    }

    /// Copies out the predictions not older than `min_ts_us`, oldest first.
    pub fn snapshot(&self, min_ts_us: i64) -> WindowData {
        let rows: Vec<usize> = self
            .order()
            .filter(|&i| self.ts_us[i] >= min_ts_us)
            .collect();
        self.copy(rows.into_iter())
    }

    fn copy(&self, rows: impl Iterator<Item = usize>) -> WindowData {
        let mut d = WindowData {
            classes: self.classes,
            embedding_dim: self.embedding_dim,
            ..WindowData::default()
        };
        for i in rows {
            d.len += 1;
            d.ts_us.push(self.ts_us[i]);
            d.class.push(self.class[i]);
            d.confidence.push(self.confidence[i]);
            d.entropy.push(self.entropy[i]);
            d.probabilities
                .extend_from_slice(&self.probabilities[i * self.classes..(i + 1) * self.classes]);
            d.inputs.extend_from_slice(&self.inputs[i * 6..(i + 1) * 6]);
            if self.has_embedding[i] {
                d.embeddings.extend_from_slice(
                    &self.embeddings[i * self.embedding_dim..(i + 1) * self.embedding_dim],
                );
            }
            d.set_size.push(self.set_size[i]);
            d.correct.push(self.correct[i]);
        }
        d
    }

    /// Refills the window from saved data (oldest first), keeping at most `capacity`.
    pub fn restore(&mut self, data: &WindowData) {
        if data.classes != self.classes || data.embedding_dim != self.embedding_dim {
            return;
        }
        let with_embedding = data.embeddings.len() / self.embedding_dim.max(1);
        let all_embedded = self.embedding_dim > 0 && with_embedding == data.len;
        for k in 0..data.len {
            let o = Observation {
                ts_us: data.ts_us[k],
                class: data.class[k] as usize,
                confidence: data.confidence[k],
                entropy: data.entropy[k],
                probabilities: &data.probabilities[k * self.classes..(k + 1) * self.classes],
                inputs: data.inputs[k * 6..(k + 1) * 6]
                    .try_into()
                    .expect("6 inputs"),
                embedding: all_embedded.then(|| {
                    &data.embeddings[k * self.embedding_dim..(k + 1) * self.embedding_dim]
                }),
                set_size: data.set_size(k),
                correct: data.correct(k),
            };
            self.push(&o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(ts: i64, class: usize, p: &[f32]) -> Observation<'_> {
        Observation {
            ts_us: ts,
            class,
            confidence: p[class],
            entropy: 0.1,
            probabilities: p,
            inputs: [ts as f32; 6],
            embedding: None,
            set_size: 1.0,
            correct: 0.5,
        }
    }

    #[test]
    fn keeps_the_last_n_in_order() {
        let mut w = Window::new(3, 2, 0);
        let p = [0.2f32, 0.8];
        for ts in 1..=5 {
            w.push(&obs(ts, 1, &p));
        }
        assert_eq!(w.len(), 3);
        let d = w.snapshot(i64::MIN);
        assert_eq!(d.ts_us, vec![3, 4, 5]);
        assert_eq!(d.probabilities.len(), 6);
        assert_eq!(d.inputs[0], 3.0);
        // Age limit.
        let d = w.snapshot(4);
        assert_eq!(d.ts_us, vec![4, 5]);
    }

    #[test]
    fn since_returns_each_row_once_and_counts_the_overwritten() {
        let mut w = Window::new(3, 2, 0);
        let p = [0.2f32, 0.8];
        w.push(&obs(1, 1, &p));
        let f = w.since(0);
        assert_eq!((f.data.ts_us.clone(), f.pushed, f.skipped), (vec![1], 1, 0));
        assert_eq!(w.since(f.pushed).data.len, 0);
        for ts in 2..=6 {
            w.push(&obs(ts, 1, &p));
        }
        let f = w.since(1);
        assert_eq!(
            (f.data.ts_us.clone(), f.pushed, f.skipped),
            (vec![4, 5, 6], 6, 2)
        );
        assert_eq!(f.data.set_size, vec![1.0; 3]);
    }

    #[test]
    fn unknown_inputs_survive_json() {
        let mut w = Window::new(2, 2, 0);
        let p = [0.4f32, 0.6];
        let mut o = obs(1, 1, &p);
        o.inputs = [f32::NAN, 0.5, f32::NAN, 0.1, 8.0, 8.0];
        w.push(&o);
        let data = w.snapshot(i64::MIN);
        let json = serde_json::to_string(&data).unwrap();
        assert!(json.contains("null"), "{json}");
        let back: WindowData = serde_json::from_str(&json).unwrap();
        assert!(back.is_consistent());
        assert!(back.inputs[0].is_nan() && back.inputs[2].is_nan());
        assert_eq!(back.inputs[1..2], [0.5]);
        assert_eq!((back.len, back.ts_us.clone()), (1, vec![1]));
    }

    #[test]
    fn restore_round_trips() {
        let mut w = Window::new(4, 2, 2);
        let p = [0.3f32, 0.7];
        for ts in 0..6 {
            let e = [ts as f32, 1.0];
            let mut o = obs(ts, 1, &p);
            o.embedding = Some(&e);
            w.push(&o);
        }
        let saved = w.snapshot(i64::MIN);
        let mut fresh = Window::new(4, 2, 2);
        fresh.restore(&saved);
        assert_eq!(fresh.snapshot(i64::MIN), saved);
    }
}
