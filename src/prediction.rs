//! What one model output means: softmax, the predicted class, confidence, margin, entropy, top-k.
//!
//! Pure functions over probability vectors. Conventions (DESIGN.md): entropy in nats, margin is
//! top-1 minus top-2 probability, ties go to the lower class index (numpy's argmax).

/// Replaces logits with their softmax, in place (max-subtracted, accumulated in f64).
pub fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in values.iter_mut() {
        let e = f64::from(*v - max).exp();
        *v = e as f32;
        sum += e;
    }
    for v in values.iter_mut() {
        *v = (f64::from(*v) / sum) as f32;
    }
}

/// The summary statistics of one probability vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub class: usize,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
}

/// Predicted class, confidence, margin and entropy (nats) of `probabilities`.
pub fn summarize(probabilities: &[f32]) -> Summary {
    let mut best = 0usize;
    let mut first = f32::NEG_INFINITY;
    let mut second = f32::NEG_INFINITY;
    for (i, &p) in probabilities.iter().enumerate() {
        if p > first {
            second = first;
            first = p;
            best = i;
        } else if p > second {
            second = p;
        }
    }
    let margin = if probabilities.len() > 1 {
        first - second
    } else {
        first
    };
    Summary {
        class: best,
        confidence: first,
        margin,
        entropy: entropy(probabilities),
    }
}

/// Shannon entropy in nats; zero probabilities contribute nothing.
pub fn entropy(probabilities: &[f32]) -> f32 {
    let mut h = 0f64;
    for &p in probabilities {
        if p > 0.0 {
            let p = f64::from(p);
            h -= p * p.ln();
        }
    }
    h as f32
}

/// The `k` most probable classes, most probable first (ties by lower index).
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .partial_cmp(&probabilities[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order.into_iter().map(|i| (i, probabilities[i])).collect()
}

/// What the sidecar noticed about one prediction (the answer's and the log's `flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Confidence under the reference's 5th percentile.
    LowConfidence,
    /// Out of distribution: confidence under the reference's 1st percentile, or an embedding
    /// farther from its class centroid than 99% of the reference.
    OodSuspect,
    /// The probabilities were temperature-scaled before serving.
    Calibrated,
    /// Made while a test family of the monitor was in alert.
    ShiftedWindow,
}

impl Flag {
    pub const ALL: [Flag; 4] = [
        Flag::LowConfidence,
        Flag::OodSuspect,
        Flag::Calibrated,
        Flag::ShiftedWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::LowConfidence => "low_confidence",
            Flag::OodSuspect => "ood_suspect",
            Flag::Calibrated => "calibrated",
            Flag::ShiftedWindow => "shifted_window",
        }
    }

    pub fn parse(s: &str) -> Option<Flag> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_definition() {
        let mut v = vec![1.0f32, 2.0, 3.0];
        softmax_in_place(&mut v);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        for (got, want) in v.iter().zip(e.iter().map(|x| x / s)) {
            assert!((f64::from(*got) - want).abs() < 1e-7);
        }
        let mut big = vec![1000.0f32, 1000.0];
        softmax_in_place(&mut big);
        assert_eq!(big, vec![0.5, 0.5]);
    }

    #[test]
    fn summary_of_a_vector() {
        let s = summarize(&[0.1, 0.6, 0.3]);
        assert_eq!(s.class, 1);
        assert_eq!(s.confidence, 0.6);
        assert!((s.margin - 0.3).abs() < 1e-7);
        let want = -(0.1f64 * 0.1f64.ln() + 0.6 * 0.6f64.ln() + 0.3 * 0.3f64.ln());
        assert!((f64::from(s.entropy) - want).abs() < 1e-6);
        // Ties: the lower index wins, margin zero.
        let t = summarize(&[0.5, 0.5, 0.0]);
        assert_eq!((t.class, t.margin), (0, 0.0));
        assert!((f64::from(t.entropy) - 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_and_truncates() {
        assert_eq!(top_k(&[0.2, 0.5, 0.3], 2), vec![(1, 0.5), (2, 0.3)]);
        assert_eq!(top_k(&[0.5, 0.5], 5), vec![(0, 0.5), (1, 0.5)]);
    }
}
