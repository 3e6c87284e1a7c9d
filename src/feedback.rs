//! Matching delayed labels to predictions: a bounded memory of recent request ids.
//!
//! Every prediction's id is remembered (oldest forgotten first, `feedback.match_window` at most);
//! a label for a remembered id is `matched` the first time and `duplicate` after; a label for an
//! id no longer or never remembered is `unknown_id`. Every valid label is stored either way:
//! labels can outlive the window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::metrics::FeedbackOutcome;

#[derive(Debug)]
struct Inner {
    labeled: HashMap<String, bool>,
    order: VecDeque<String>,
    capacity: usize,
}

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

    /// Remembers a prediction's id (a repeated id keeps its place and label state).
    pub fn remember(&self, request_id: &str) {
        let mut inner = self.lock();
        if inner.labeled.contains_key(request_id) {
            return;
        }
        inner.insert(request_id.to_string(), false);
    }

    /// Records a label for `request_id` and says how it matched.
    pub fn label(&self, request_id: &str) -> FeedbackOutcome {
        let mut inner = self.lock();
        match inner.labeled.get_mut(request_id) {
            Some(labeled) if *labeled => FeedbackOutcome::Duplicate,
            Some(labeled) => {
                *labeled = true;
                FeedbackOutcome::Matched
            }
            None => {
                // Remember it as labeled, so a second label for it is a duplicate.
                inner.insert(request_id.to_string(), true);
                FeedbackOutcome::UnknownId
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
    fn insert(&mut self, id: String, labeled: bool) {
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.labeled.remove(&old);
            }
        }
        self.labeled.insert(id.clone(), labeled);
        self.order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_bounded_memory() {
        let recent = RecentPredictions::new(3);
        for id in ["a", "b", "c"] {
            recent.remember(id);
        }
        assert_eq!(recent.label("a"), FeedbackOutcome::Matched);
        assert_eq!(recent.label("a"), FeedbackOutcome::Duplicate);
        assert_eq!(recent.label("zzz"), FeedbackOutcome::UnknownId);
        assert_eq!(recent.label("zzz"), FeedbackOutcome::Duplicate);
        // "zzz" took a place: the oldest ("a") is forgotten.
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.label("a"), FeedbackOutcome::UnknownId);
        recent.remember("d");
        assert_eq!(recent.len(), 3);
    }
}
