//! Matching delayed labels to predictions: a bounded join buffer of recent predictions.
//!
//! Every prediction's id, predicted class, served probabilities and embedding are remembered
//! (oldest forgotten first, `feedback.match_window` at most: with a 32-d embedding about 200
//! bytes each, 20 MB at the default 100,000); the embeddings answer `GET /v1/similar` and give
//! exported candidates the label of their nearest labeled neighbour ([`RecentPredictions::nearest`],
//! an exact scan);
//! a label for a remembered id is `matched` the first time and `duplicate` after; a label for an
//! id no longer or never remembered is `unknown_id`. Every valid label is stored either way:
//! labels can outlive the window.

pub mod label_studio;

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::metrics::FeedbackOutcome;

/// `[feedback]`: matching delayed labels to predictions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFeedback {
    pub match_window: usize,
}

impl Default for RawFeedback {
    fn default() -> Self {
        RawFeedback {
            match_window: 100_000,
        }
    }
}

impl RawFeedback {
    /// How many recent request ids each model remembers.
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> usize {
        if self.match_window == 0 {
            bad("feedback.match_window", "must be at least 1".into());
        }
        self.match_window
    }
}

#[derive(Debug)]
struct Entry {
    labeled: bool,
    /// The predicted class (`None` for ids first seen through a label).
    predicted: Option<usize>,
    /// The class of the delayed label, once one came back.
    true_class: Option<usize>,
    /// The embedding (empty when the model has none, or for ids first seen through a label).
    embedding: Box<[f32]>,
    /// Served probabilities (empty for ids first seen through a label).
    probabilities: Box<[f32]>,
    /// The model version that served them.
    version: Option<std::sync::Arc<str>>,
}

#[derive(Debug)]
struct Inner {
    labeled: HashMap<String, Entry>,
    order: VecDeque<String>,
    capacity: usize,
}

/// Most ids the join buffer reserves room for up front (4 Mi: about 270 MB of table).
const PREALLOCATE_MAX: usize = 1 << 22;

/// A labeled prediction as it was served: its probabilities and model version.
pub type Served = (Box<[f32]>, std::sync::Arc<str>);

/// What is remembered of a prediction.
#[derive(Debug, Clone, Copy)]
pub struct Remembered<'a> {
    pub probabilities: &'a [f32],
    pub embedding: Option<&'a [f32]>,
    pub predicted_class: usize,
    pub version: &'a std::sync::Arc<str>,
}

/// A remembered prediction near a query ([`RecentPredictions::nearest`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Near {
    pub request_id: String,
    pub distance: f64,
    /// `None` for an id first seen through a label (it has no embedding, so never here).
    pub predicted_class: Option<usize>,
    pub true_class: Option<usize>,
}

/// Recent request ids and whether each has a label yet.
#[derive(Debug)]
pub struct RecentPredictions {
    inner: Mutex<Inner>,
}

impl RecentPredictions {
    pub fn new(capacity: usize) -> Self {
        // The map is sized for twice the ids it will hold: every remembered id evicts the
        // oldest, and a hash table whose removals leave it more than half full doubles on a
        // later insert instead of rehashing in place (measured: +17 MiB between 100,000 and
        // 300,000 predictions at the default 100,000). Sized up front, its memory is all in
        // use once the window is full and stays flat after. Beyond PREALLOCATE_MAX ids it
        // grows on demand.
        let reserved = capacity.saturating_mul(2).min(PREALLOCATE_MAX);
        RecentPredictions {
            inner: Mutex::new(Inner {
                labeled: HashMap::with_capacity(reserved),
                order: VecDeque::with_capacity(capacity.min(PREALLOCATE_MAX)),
                capacity: capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `request_id` is remembered (as a prediction or a label).
    pub fn contains(&self, request_id: &str) -> bool {
        self.lock().labeled.contains_key(request_id)
    }

    /// Remembers a prediction (a repeated id keeps its place and label state).
    pub fn remember(&self, request_id: &str, served: Remembered<'_>) {
        let mut inner = self.lock();
        if inner.labeled.contains_key(request_id) {
            return;
        }
        inner.insert(
            request_id.to_string(),
            Entry {
                labeled: false,
                predicted: Some(served.predicted_class),
                true_class: None,
                embedding: served.embedding.unwrap_or_default().into(),
                probabilities: served.probabilities.into(),
                version: Some(std::sync::Arc::clone(served.version)),
            },
        );
    }

    /// The embedding remembered for `request_id`, if any.
    pub fn embedding(&self, request_id: &str) -> Option<Vec<f32>> {
        self.lock()
            .labeled
            .get(request_id)
            .filter(|e| !e.embedding.is_empty())
            .map(|e| e.embedding.to_vec())
    }

    /// The class of the delayed label of `request_id`, when one came back.
    pub fn true_class(&self, request_id: &str) -> Option<usize> {
        self.lock()
            .labeled
            .get(request_id)
            .and_then(|e| e.true_class)
    }

    /// The `k` remembered predictions whose embeddings lie nearest to `query` (Euclidean),
    /// nearest first (ties: the smaller id), leaving out `exclude`; only those with a delayed
    /// label when `labeled_only`. An exact scan under the buffer's lock: O(n·d), a few
    /// milliseconds at 100,000 32-d embeddings. Empty for a query with a value that is not
    /// finite; embeddings of another length are passed over.
    pub fn nearest(&self, query: &[f32], k: usize, exclude: &str, labeled_only: bool) -> Vec<Near> {
        if k == 0 || query.is_empty() || query.iter().any(|v| !v.is_finite()) {
            return Vec::new();
        }
        let inner = self.lock();
        let mut best: Vec<Near> = Vec::with_capacity(k + 1);
        for (id, e) in &inner.labeled {
            if e.embedding.len() != query.len()
                || id == exclude
                || (labeled_only && e.true_class.is_none())
            {
                continue;
            }
            let distance = crate::stats::knn::euclidean(query, &e.embedding);
            let before = |b: &Near| {
                distance
                    .total_cmp(&b.distance)
                    .then_with(|| id.as_str().cmp(&b.request_id))
                    .is_lt()
            };
            if best.len() == k && !before(&best[k - 1]) {
                continue;
            }
            let at = best.partition_point(|b| !before(b));
            best.insert(
                at,
                Near {
                    request_id: id.clone(),
                    distance,
                    predicted_class: e.predicted,
                    true_class: e.true_class,
                },
            );
            best.truncate(k);
        }
        best
    }

    /// Records a label (of class `class`) for `request_id`: how it matched and, the first time
    /// a remembered prediction is labeled, its served probabilities and the version that
    /// served them.
    pub fn label(&self, request_id: &str, class: usize) -> (FeedbackOutcome, Option<Served>) {
        let mut inner = self.lock();
        match inner.labeled.get_mut(request_id) {
            Some(entry) if entry.labeled => (FeedbackOutcome::Duplicate, None),
            Some(entry) => {
                entry.labeled = true;
                entry.true_class = Some(class);
                let served = entry
                    .version
                    .take()
                    .map(|v| (std::mem::take(&mut entry.probabilities), v));
                (FeedbackOutcome::Matched, served)
            }
            None => {
                // Remember it as labeled, so a second label for it is a duplicate.
                inner.insert(
                    request_id.to_string(),
                    Entry {
                        labeled: true,
                        predicted: None,
                        true_class: Some(class),
                        embedding: Box::new([]),
                        probabilities: Box::new([]),
                        version: None,
                    },
                );
                (FeedbackOutcome::UnknownId, None)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn insert(&mut self, id: String, entry: Entry) {
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.labeled.remove(&old);
            }
        }
        self.labeled.insert(id.clone(), entry);
        self.order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_bounded_memory() {
        let recent = RecentPredictions::new(3);
        let v1: std::sync::Arc<str> = "v1".into();
        let remembered = |p: &'static [f32]| Remembered {
            probabilities: p,
            embedding: None,
            predicted_class: 1,
            version: &v1,
        };
        for id in ["a", "b", "c"] {
            recent.remember(id, remembered(&[0.25, 0.75]));
        }
        assert!(recent.contains("b"));
        assert!(!recent.contains("zzz"));
        let (outcome, served) = recent.label("a", 1);
        assert_eq!(outcome, FeedbackOutcome::Matched);
        let (probs, version) = served.unwrap();
        assert_eq!(&probs[..], &[0.25f32, 0.75][..]);
        assert_eq!(&*version, "v1");
        assert_eq!(recent.label("a", 1), (FeedbackOutcome::Duplicate, None));
        assert_eq!(recent.label("zzz", 0), (FeedbackOutcome::UnknownId, None));
        assert_eq!(recent.label("zzz", 0).0, FeedbackOutcome::Duplicate);
        // "zzz" took a place: the oldest ("a") is forgotten.
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.label("a", 1).0, FeedbackOutcome::UnknownId);
        recent.remember("d", remembered(&[0.5, 0.5]));
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn nearest_remembered_embeddings_with_their_labels() {
        let recent = RecentPredictions::new(10);
        let v: std::sync::Arc<str> = "v".into();
        for (id, x, class) in [
            ("p0", 0.0, 0),
            ("p1", 1.0, 1),
            ("p2", 2.0, 1),
            ("p3", 3.5, 0),
        ] {
            recent.remember(
                id,
                Remembered {
                    probabilities: &[0.5, 0.5],
                    embedding: Some(&[x, 0.0]),
                    predicted_class: class,
                    version: &v,
                },
            );
        }
        // One without an embedding, one with another length: never neighbours.
        recent.remember(
            "none",
            Remembered {
                probabilities: &[0.5, 0.5],
                embedding: None,
                predicted_class: 0,
                version: &v,
            },
        );
        recent.remember(
            "short",
            Remembered {
                probabilities: &[0.5, 0.5],
                embedding: Some(&[1.0]),
                predicted_class: 0,
                version: &v,
            },
        );
        assert_eq!(recent.label("p2", 0).0, FeedbackOutcome::Matched);
        let near = recent.nearest(&[1.2, 0.0], 3, "p1", false);
        let ids: Vec<&str> = near.iter().map(|n| n.request_id.as_str()).collect();
        assert_eq!(ids, ["p2", "p0", "p3"]);
        assert!((near[0].distance - 0.8).abs() < 1e-6);
        assert_eq!(
            (near[0].predicted_class, near[0].true_class),
            (Some(1), Some(0))
        );
        assert_eq!(near[1].true_class, None);
        let labeled = recent.nearest(&[0.0, 0.0], 5, "", true);
        assert_eq!(labeled.len(), 1);
        assert_eq!(labeled[0].request_id, "p2");
        assert_eq!(recent.embedding("p3"), Some(vec![3.5, 0.0]));
        assert_eq!(recent.embedding("none"), None);
        assert_eq!(recent.true_class("p2"), Some(0));
        assert!(recent.nearest(&[f32::NAN, 0.0], 3, "", false).is_empty());
        assert!(recent.nearest(&[0.0, 0.0], 0, "", false).is_empty());
    }
}
