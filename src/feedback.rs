//! Matching delayed labels to predictions: a bounded join buffer of recent predictions.
//!
//! Every prediction's id and served probabilities are remembered (oldest forgotten first,
//! `feedback.match_window` at most);
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

/// A labeled prediction as it was served: its probabilities and model version.
pub type Served = (Box<[f32]>, std::sync::Arc<str>);

/// Recent request ids and whether each has a label yet.
#[derive(Debug)]
pub struct RecentPredictions {
    inner: Mutex<Inner>,
}

impl RecentPredictions {
    pub fn new(capacity: usize) -> Self {
        RecentPredictions {
            inner: Mutex::new(Inner {
                labeled: HashMap::with_capacity(capacity.min(1 << 16)),
                order: VecDeque::with_capacity(capacity.min(1 << 16)),
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
    pub fn remember(&self, request_id: &str, probabilities: &[f32], version: &std::sync::Arc<str>) {
        let mut inner = self.lock();
        if inner.labeled.contains_key(request_id) {
            return;
        }
        inner.insert(
            request_id.to_string(),
            Entry {
                labeled: false,
                probabilities: probabilities.into(),
                version: Some(std::sync::Arc::clone(version)),
            },
        );
    }

    /// Records a label for `request_id`: how it matched and, the first time a remembered
    /// prediction is labeled, its served probabilities and the version that served them.
    pub fn label(&self, request_id: &str) -> (FeedbackOutcome, Option<Served>) {
        let mut inner = self.lock();
        match inner.labeled.get_mut(request_id) {
            Some(entry) if entry.labeled => (FeedbackOutcome::Duplicate, None),
            Some(entry) => {
                entry.labeled = true;
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
        for id in ["a", "b", "c"] {
            recent.remember(id, &[0.25, 0.75], &v1);
        }
        assert!(recent.contains("b"));
        assert!(!recent.contains("zzz"));
        let (outcome, served) = recent.label("a");
        assert_eq!(outcome, FeedbackOutcome::Matched);
        let (probs, version) = served.unwrap();
        assert_eq!(&probs[..], &[0.25f32, 0.75][..]);
        assert_eq!(&*version, "v1");
        assert_eq!(recent.label("a"), (FeedbackOutcome::Duplicate, None));
        assert_eq!(recent.label("zzz"), (FeedbackOutcome::UnknownId, None));
        assert_eq!(recent.label("zzz").0, FeedbackOutcome::Duplicate);
        // "zzz" took a place: the oldest ("a") is forgotten.
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.label("a").0, FeedbackOutcome::UnknownId);
        recent.remember("d", &[0.5, 0.5], &v1);
        assert_eq!(recent.len(), 3);
    }
}
