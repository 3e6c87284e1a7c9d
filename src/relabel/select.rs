//! Which stored candidates go to the labelers: near-duplicates dropped by dHash, a share reserved
//! for the random sample (not chosen by score) so the labeled set is not only hard cases, a
//! share for the out-of-distribution candidates, ranked by their distance to the reference
//! (`ood::OodDetector`, not the model's uncertainty: the confidently wrong come first) and
//! balanced over clusters of their embeddings (their predicted class means nothing), and the
//! in-distribution rest ranked by uncertainty (raised for a shifted window) and balanced by
//! predicted class; each group spread out by greedy k-center on the embedding (or probability
//! vector).
//!
//! Pure: plain data in, indices out, no IO. Every input is accepted without panicking: NaN
//! summaries count as certain, boosts and shares out of range are clamped, a predicted class
//! outside `0..classes` is kept in a bucket of its own (see [`select`]). Deterministic: ties are
//! broken by `request_id`, then by position in the pool.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use crate::image_stats::hamming;

/// How a candidate's uncertainty is measured from its prediction summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncertainty {
    /// Entropy of the probabilities, normalised by its maximum `ln(classes)`.
    Entropy,
    /// One minus the gap between the two highest probabilities.
    Margin,
    /// One minus the top probability, normalised by its maximum `(classes − 1) / classes`.
    LeastConfidence,
}

impl Uncertainty {
    /// Parses the configuration spelling: `"entropy"`, `"margin"` or `"least_confidence"`;
    /// `None` for anything else.
    pub fn parse(s: &str) -> Option<Uncertainty> {
        match s {
            "entropy" => Some(Uncertainty::Entropy),
            "margin" => Some(Uncertainty::Margin),
            "least_confidence" => Some(Uncertainty::LeastConfidence),
            _ => None,
        }
    }

    /// The configuration spelling, which [`Uncertainty::parse`] reads back.
    pub fn as_str(self) -> &'static str {
        match self {
            Uncertainty::Entropy => "entropy",
            Uncertainty::Margin => "margin",
            Uncertainty::LeastConfidence => "least_confidence",
        }
    }
}

/// One stored prediction that could be sent for relabeling.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    pub request_id: String,
    pub predicted_class: usize,
    /// The top probability.
    pub confidence: f32,
    /// The top probability minus the second.
    pub margin: f32,
    /// Entropy of the probabilities, in nats.
    pub entropy: f32,
    /// 64-bit difference hash of the image (`image_stats::dhash`).
    pub dhash: u64,
    /// The embedding, or the probability vector when the model has none.
    pub vector: Vec<f32>,
    /// Flagged `ood_suspect`.
    pub ood: bool,
    /// The out-of-distribution score (`ood::OodDetector::score`: above 1 is out); 0 when
    /// unknown (no embedding, no reference, an index written before it existed).
    #[serde(default)]
    pub ood_score: f32,
    /// Came while the monitor judged the window shifted (an alert).
    pub shifted: bool,
    /// Member of the random sample of the traffic (the store's reservoir, not chosen by score).
    pub random: bool,
    /// When the prediction was made, microseconds since the Unix epoch.
    pub ts_us: i64,
}

/// How candidates are scored and chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionConfig {
    pub uncertainty: Uncertainty,
    /// Number of classes the model predicts.
    pub classes: usize,
    /// A candidate flagged out-of-distribution scores `1 + ood_boost × (1 − 1/ood_score)`
    /// (`ood_score` below 1 or unknown counts as 1; a negative or non-finite boost as 0), so
    /// above every in-distribution candidate of an unshifted window, the farther the higher.
    pub ood_boost: f64,
    /// A candidate from a shifted window has its score multiplied by `1 + shift_boost`
    /// (negative or not finite: no boost).
    pub shift_boost: f64,
    /// Two images whose dHashes differ in at most this many bits are near-duplicates.
    pub dhash_threshold: u32,
    /// Share of a selection reserved for random-sample members, clamped to [0, 1] (NaN: 0).
    pub random_share: f64,
    /// Share of the slots left after the random sample that goes to out-of-distribution
    /// candidates, clamped to [0, 1] (NaN: 0); slots one group cannot fill go to the other.
    pub ood_share: f64,
    /// Out-of-distribution candidates are balanced over at most this many clusters of their
    /// vectors (greedy k-center centres; 0 counts as 1).
    pub ood_clusters: usize,
    /// Within a class, k-center chooses among the top `candidate_pool_factor × quota` candidates
    /// by score (0 counts as 1: the top `quota`, no diversity).
    pub candidate_pool_factor: usize,
}

/// How unsure the model was about a candidate, in [0, 1] (1: as unsure as it can be):
/// - `Entropy`: `entropy / ln(classes)`, the entropy over its maximum (uniform probabilities);
/// - `Margin`: `1 − margin`, 1 when the two top classes tie;
/// - `LeastConfidence`: `(1 − confidence) · classes / (classes − 1)`, 1 when the top
///   probability is `1 / classes`.
///
/// Entropy and least confidence are 0 when `classes < 2` (one class leaves no doubt). A value
/// outside [0, 1] (a summary inconsistent with `classes`) is clamped; a NaN summary gives 0.
pub fn uncertainty(c: &Candidate, cfg: &SelectionConfig) -> f64 {
    c.signals().uncertainty(cfg)
}

/// What scoring reads of a prediction: its summary and flags.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signals {
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    pub ood: bool,
    /// See [`Candidate::ood_score`].
    pub ood_score: f32,
    pub shifted: bool,
}

impl Candidate {
    pub fn signals(&self) -> Signals {
        Signals {
            confidence: self.confidence,
            margin: self.margin,
            entropy: self.entropy,
            ood: self.ood,
            ood_score: self.ood_score,
            shifted: self.shifted,
        }
    }
}

impl Signals {
    /// See [`uncertainty`].
    pub fn uncertainty(&self, cfg: &SelectionConfig) -> f64 {
        let c = self;
        let k = cfg.classes as f64;
        let raw = match cfg.uncertainty {
            Uncertainty::Margin => 1.0 - f64::from(c.margin),
            _ if cfg.classes < 2 => 0.0,
            Uncertainty::Entropy => f64::from(c.entropy) / k.ln(),
            Uncertainty::LeastConfidence => (1.0 - f64::from(c.confidence)) * k / (k - 1.0),
        };
        if raw.is_nan() {
            0.0
        } else {
            raw.clamp(0.0, 1.0)
        }
    }

    /// See [`score`].
    pub fn score(&self, cfg: &SelectionConfig) -> f64 {
        let mut s = if self.ood {
            let r = f64::from(self.ood_score);
            let r = if r.is_finite() { r.max(1.0) } else { 1.0 };
            1.0 + (boost(cfg.ood_boost) - 1.0) * (1.0 - 1.0 / r)
        } else {
            self.uncertainty(cfg)
        };
        if self.shifted {
            s *= boost(cfg.shift_boost);
        }
        s
    }
}

/// The multiplier `1 + boost`, with a negative or non-finite boost counting as none.
fn boost(boost: f64) -> f64 {
    if boost.is_finite() && boost > 0.0 {
        1.0 + boost
    } else {
        1.0
    }
}

/// A candidate's priority: its [`uncertainty`] (in [0, 1]), or for one flagged
/// out-of-distribution `1 + ood_boost × (1 − 1/ood_score)` (in [1, 1 + ood_boost): how far it
/// lies from the reference, whatever the model's confidence), × `(1 + shift_boost)` when it came
/// from a shifted window. Finite and ≥ 0.
pub fn score(c: &Candidate, cfg: &SelectionConfig) -> f64 {
    c.signals().score(cfg)
}

/// Why a candidate is worth labeling, for the labeler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its [`uncertainty`] is at least 0.5.
    Uncertain,
    /// Flagged out of distribution.
    OodSuspect,
    /// Made while the monitor's window was shifted.
    ShiftedWindow,
    /// A member of the random sample.
    RandomSample,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Uncertain => "uncertain",
            Reason::OodSuspect => "ood_suspect",
            Reason::ShiftedWindow => "shifted_window",
            Reason::RandomSample => "random_sample",
        }
    }
}

/// The reasons of a candidate, in the order of [`Reason`].
pub fn reasons(c: &Candidate, cfg: &SelectionConfig) -> Vec<Reason> {
    let mut out = Vec::new();
    if uncertainty(c, cfg) >= 0.5 {
        out.push(Reason::Uncertain);
    }
    if c.ood {
        out.push(Reason::OodSuspect);
    }
    if c.shifted {
        out.push(Reason::ShiftedWindow);
    }
    if c.random {
        out.push(Reason::RandomSample);
    }
    out
}

/// Chooses at most `limit` candidates, best first (indices into `pool`):
///
/// 1. near-duplicates dropped: walking the pool by score, a candidate within `dhash_threshold`
///    bits of one already kept (a higher-scored one) is skipped;
/// 2. `round(limit × random_share)` random-sample members are taken first, in a fixed
///    pseudo-random order (a hash of `request_id`, not the score, so the sample stays uniform);
///    slots the sample cannot fill go to the rest;
/// 3. of the other slots, `round(rest × ood_share)` go to the candidates flagged
///    out-of-distribution and the remainder to the others; what one group cannot fill goes to
///    the other. The unpicked random members compete here like any other candidate;
/// 4. the out-of-distribution slots are shared among clusters of their vectors: greedy k-center
///    (seeded with the best-scored) picks up to `ood_clusters` centres, each candidate joins its
///    nearest centre, and the slots are shared among clusters as among classes below;
/// 5. the in-distribution slots are shared equally among the predicted classes; slots a class
///    cannot fill go to the classes that still have candidates, again equally, and an
///    indivisible remainder goes one slot each to the classes whose next candidate scores best.
///    Candidates whose predicted class is outside `0..classes` only get slots every class leaves
///    unused;
/// 6. within a class or a cluster, greedy k-center on `vector` (Euclidean) among its top
///    `candidate_pool_factor × quota` by score, seeded with the top-scored one.
///
/// The result is ordered by score; ties are broken by `request_id`, then by position in `pool`,
/// so the same pool (in any order, with distinct ids) gives the same selection.
pub fn select(pool: &[Candidate], limit: usize, cfg: &SelectionConfig) -> Vec<usize> {
    if pool.is_empty() || limit == 0 {
        return Vec::new();
    }
    let scores: Vec<f64> = pool.iter().map(|c| score(c, cfg)).collect();
    let mut by_score: Vec<usize> = (0..pool.len()).collect();
    by_score.sort_by(|&a, &b| better(pool, &scores, a, b));
    let mut rank = vec![0usize; pool.len()];
    for (r, &i) in by_score.iter().enumerate() {
        rank[i] = r;
    }

    // 1. Near-duplicates.
    let mut seen = NearDuplicates::new(cfg.dhash_threshold);
    let kept: Vec<usize> = by_score
        .iter()
        .copied()
        .filter(|&i| seen.insert_unless_near(pool[i].dhash))
        .collect();

    // 2. The random sample's reserved share.
    let mut sample: Vec<usize> = kept.iter().copied().filter(|&i| pool[i].random).collect();
    sample.sort_by(|&a, &b| {
        let (ka, kb) = (
            sample_key(&pool[a].request_id),
            sample_key(&pool[b].request_id),
        );
        ka.cmp(&kb)
            .then_with(|| pool[a].request_id.cmp(&pool[b].request_id))
            .then(a.cmp(&b))
    });
    sample.truncate(random_slots(limit, cfg.random_share));
    let mut chosen = vec![false; pool.len()];
    for &i in &sample {
        chosen[i] = true;
    }

    // 3. Out-of-distribution and in-distribution slots (each group in score order).
    let (ood, in_distribution): (Vec<usize>, Vec<usize>) = kept
        .iter()
        .copied()
        .filter(|&i| !chosen[i])
        .partition(|&i| pool[i].ood);
    let rest = limit - sample.len();
    let ood_slots = random_slots(rest, cfg.ood_share)
        .max(rest.saturating_sub(in_distribution.len()))
        .min(ood.len());
    let mut selection = sample;

    // 4. Out-of-distribution quotas by cluster, diversity within each.
    let clusters = clusters(pool, &ood, cfg.ood_clusters.max(1));
    let members: Vec<&[usize]> = clusters.iter().map(Vec::as_slice).collect();
    let quotas = share_slots(&members, &rank, ood_slots);
    for (m, &quota) in members.iter().zip(&quotas) {
        selection.extend(k_center(pool, &scores, m, quota, cfg.candidate_pool_factor));
    }

    // 5. Per-class quotas over the in-distribution rest.
    let mut classes: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut unknown_class = Vec::new();
    for &i in &in_distribution {
        let c = pool[i].predicted_class;
        if c < cfg.classes {
            classes.entry(c).or_default().push(i);
        } else {
            unknown_class.push(i);
        }
    }
    let mut slots = rest - quotas.iter().sum::<usize>();
    let members: Vec<&[usize]> = classes.values().map(Vec::as_slice).collect();
    let quotas = share_slots(&members, &rank, slots);
    slots -= quotas.iter().sum::<usize>();

    // 6. Diversity within each class.
    for (m, &quota) in members.iter().zip(&quotas) {
        selection.extend(k_center(pool, &scores, m, quota, cfg.candidate_pool_factor));
    }
    let unknown_quota = slots.min(unknown_class.len());
    selection.extend(k_center(
        pool,
        &scores,
        &unknown_class,
        unknown_quota,
        cfg.candidate_pool_factor,
    ));

    selection.sort_by_key(|&i| rank[i]);
    selection
}

/// Groups `members` (in score order) into at most `k` clusters of their vectors: greedy
/// k-center (unweighted) picks the centres, starting from the first member, then each member
/// joins its nearest centre (ties: the earlier centre). Each cluster keeps the score order;
/// clusters are in the order their centres were picked.
fn clusters(pool: &[Candidate], members: &[usize], k: usize) -> Vec<Vec<usize>> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut centres = vec![0usize];
    let mut nearest = vec![f64::INFINITY; members.len()];
    while centres.len() < k.min(members.len()) {
        let last = &pool[members[centres[centres.len() - 1]]].vector;
        let mut farthest: Option<usize> = None;
        for j in 0..members.len() {
            nearest[j] = nearest[j].min(distance(&pool[members[j]].vector, last));
            if nearest[j] > 0.0 && farthest.is_none_or(|f| nearest[j] > nearest[f]) {
                farthest = Some(j);
            }
        }
        match farthest {
            Some(f) => centres.push(f),
            // Every member sits on a centre: no more clusters to find.
            None => break,
        }
    }
    let mut groups = vec![Vec::new(); centres.len()];
    for &i in members {
        let mut best = 0;
        let mut best_d = f64::INFINITY;
        for (g, &c) in centres.iter().enumerate() {
            let d = distance(&pool[i].vector, &pool[members[c]].vector);
            if d < best_d {
                best = g;
                best_d = d;
            }
        }
        groups[best].push(i);
    }
    groups
}

/// Coverage radius of a chosen set: the largest distance from any of `points` to its nearest
/// chosen point (what greedy k-center keeps within twice the optimum). 0 when there are no
/// points; infinite when there are points but no chosen index is in range (out-of-range indices
/// are ignored). Distances as in [`select`]: missing or non-finite components count as 0.
pub fn coverage_radius(points: &[Vec<f32>], chosen: &[usize]) -> f64 {
    let centres: Vec<&[f32]> = chosen
        .iter()
        .filter_map(|&i| points.get(i))
        .map(Vec::as_slice)
        .collect();
    points
        .iter()
        .map(|p| {
            centres
                .iter()
                .map(|c| distance(p, c))
                .fold(f64::INFINITY, f64::min)
        })
        .fold(0.0, f64::max)
}

/// Orders `a` before `b` when it is the better candidate: higher score, then smaller
/// `request_id`, then earlier in the pool.
fn better(pool: &[Candidate], scores: &[f64], a: usize, b: usize) -> Ordering {
    scores[b]
        .total_cmp(&scores[a])
        .then_with(|| pool[a].request_id.cmp(&pool[b].request_id))
        .then(a.cmp(&b))
}

/// `round(limit × share)` with the share clamped to [0, 1] (NaN: 0).
fn random_slots(limit: usize, share: f64) -> usize {
    let share = if share.is_nan() {
        0.0
    } else {
        share.clamp(0.0, 1.0)
    };
    // `as` saturates; the product never exceeds `limit` by more than rounding.
    ((limit as f64 * share).round() as usize).min(limit)
}

/// A fixed pseudo-random position for a request id: FNV-1a, then the SplitMix64 finaliser to
/// spread the bits.
fn sample_key(request_id: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in request_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Splits `slots` among classes (`members[c]`: class c's candidates in score order): equal
/// shares, what a class cannot fill passed on equally to those that still have candidates, an
/// indivisible remainder one slot each to the classes whose next candidate ranks best. Returns
/// each class's quota, never more than its candidates.
fn share_slots(members: &[&[usize]], rank: &[usize], mut slots: usize) -> Vec<usize> {
    let mut quotas = vec![0usize; members.len()];
    loop {
        let mut open: Vec<usize> = (0..members.len())
            .filter(|&c| quotas[c] < members[c].len())
            .collect();
        if open.is_empty() || slots == 0 {
            return quotas;
        }
        let each = slots / open.len();
        if each == 0 {
            open.sort_by_key(|&c| rank[members[c][quotas[c]]]);
            for &c in open.iter().take(slots) {
                quotas[c] += 1;
            }
            return quotas;
        }
        for c in open {
            let add = each.min(members[c].len() - quotas[c]);
            quotas[c] += add;
            slots -= add;
        }
    }
}

/// Greedy k-center weighted by score: `quota` of `members` (in score order), chosen among the
/// first `factor × quota`, starting from the first and then repeatedly the one whose distance to
/// the nearest chosen point, times its score, is largest (ties: the better-scored). Weighting by
/// score keeps diversity from trading an informative image for a merely distant one; with equal
/// scores it is plain greedy k-center.
fn k_center(
    pool: &[Candidate],
    scores: &[f64],
    members: &[usize],
    quota: usize,
    factor: usize,
) -> Vec<usize> {
    let reach = quota.saturating_mul(factor.max(1)).min(members.len());
    let members = &members[..reach];
    if quota >= members.len() {
        return members.to_vec();
    }
    let mut taken = vec![false; members.len()];
    let mut nearest = vec![f64::INFINITY; members.len()];
    let mut chosen = Vec::with_capacity(quota);
    let mut next = 0;
    while chosen.len() < quota {
        taken[next] = true;
        chosen.push(members[next]);
        let centre = &pool[members[next]].vector;
        let mut farthest: Option<usize> = None;
        for j in 0..members.len() {
            if taken[j] {
                continue;
            }
            nearest[j] = nearest[j].min(distance(&pool[members[j]].vector, centre));
            let weighted = |k: usize| nearest[k] * scores[members[k]].max(f64::MIN_POSITIVE);
            if farthest.is_none_or(|f| weighted(j) > weighted(f)) {
                farthest = Some(j);
            }
        }
        match farthest {
            Some(f) => next = f,
            None => break,
        }
    }
    chosen
}

/// Euclidean distance; a component missing from the shorter vector, or not finite, counts as 0.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    let finite = |x: Option<&f32>| x.copied().filter(|v| v.is_finite()).map_or(0.0, f64::from);
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let d = finite(a.get(i)) - finite(b.get(i));
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// The dHashes kept so far, answering "is a new hash within `threshold` bits of one of them".
///
/// Hashes within t bits differ in at most t bits, so when the 64 bits are cut into t + 1 chunks
/// at least one chunk is identical (pigeonhole): a lookup only compares hashes that share a chunk.
/// From 16 bits on the chunks are too short to narrow anything, and a plain scan is used.
struct NearDuplicates {
    threshold: u32,
    /// (first bit, width) of each chunk; empty for a plain scan.
    chunks: Vec<(u32, u32)>,
    /// Per chunk: chunk value → hashes holding it.
    buckets: Vec<HashMap<u64, Vec<u64>>>,
    all: Vec<u64>,
}

impl NearDuplicates {
    const MAX_INDEXED_THRESHOLD: u32 = 15;

    fn new(threshold: u32) -> Self {
        let chunks = if threshold <= Self::MAX_INDEXED_THRESHOLD {
            let n = threshold + 1;
            (0..n)
                .map(|j| (j * 64 / n, (j + 1) * 64 / n - j * 64 / n))
                .collect()
        } else {
            Vec::new()
        };
        let buckets = vec![HashMap::new(); chunks.len()];
        NearDuplicates {
            threshold,
            chunks,
            buckets,
            all: Vec::new(),
        }
    }

    fn chunk(hash: u64, (start, width): (u32, u32)) -> u64 {
        (hash >> start) & (u64::MAX >> (64 - width))
    }

    /// Keeps `hash` and answers true, unless it is within the threshold of a kept one (false).
    fn insert_unless_near(&mut self, hash: u64) -> bool {
        let near = |h: &u64| hamming(hash, *h) <= self.threshold;
        let found = if self.chunks.is_empty() {
            self.all.iter().any(near)
        } else {
            self.chunks
                .iter()
                .zip(&self.buckets)
                .any(|(&chunk, bucket)| {
                    bucket
                        .get(&Self::chunk(hash, chunk))
                        .is_some_and(|hashes| hashes.iter().any(near))
                })
        };
        if found {
            return false;
        }
        if self.chunks.is_empty() {
            self.all.push(hash);
        } else {
            for (&chunk, bucket) in self.chunks.iter().zip(&mut self.buckets) {
                bucket
                    .entry(Self::chunk(hash, chunk))
                    .or_default()
                    .push(hash);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded test data.
    struct Rng(crate::stats::random::SplitMix64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0.next_u64()
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            self.0.unit()
        }

        fn below(&mut self, n: usize) -> usize {
            (self.unit() * n as f64) as usize
        }

        /// Roughly standard normal (sum of 12 uniforms).
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
        }
    }

    fn config(classes: usize) -> SelectionConfig {
        SelectionConfig {
            uncertainty: Uncertainty::Margin,
            classes,
            ood_boost: 1.0,
            shift_boost: 0.5,
            dhash_threshold: 4,
            random_share: 0.0,
            candidate_pool_factor: 3,
            ood_share: 0.5,
            ood_clusters: 8,
        }
    }

    /// A candidate with the given margin (so score 1 − margin under `config`) and a random
    /// dHash: distinct candidates are never near-duplicates by accident.
    fn candidate(id: &str, class: usize, margin: f32, rng: &mut Rng) -> Candidate {
        Candidate {
            request_id: id.to_string(),
            predicted_class: class,
            confidence: 0.5 + margin / 2.0,
            margin,
            entropy: 0.5,
            dhash: rng.next_u64(),
            vector: vec![rng.unit() as f32, rng.unit() as f32],
            ood: false,
            ood_score: 0.0,
            shifted: false,
            random: false,
            ts_us: 0,
        }
    }

    fn count_by_class(pool: &[Candidate], chosen: &[usize], classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &i in chosen {
            counts[pool[i].predicted_class] += 1;
        }
        counts
    }

    #[test]
    fn uncertainty_parses_and_prints() {
        for u in [
            Uncertainty::Entropy,
            Uncertainty::Margin,
            Uncertainty::LeastConfidence,
        ] {
            assert_eq!(Uncertainty::parse(u.as_str()), Some(u));
        }
        assert_eq!(Uncertainty::parse("Entropy"), None);
        assert_eq!(Uncertainty::parse(""), None);
    }

    #[test]
    fn uncertainty_measures_follow_their_definitions() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(1));
        let mut c = candidate("a", 0, 0.2, &mut rng);
        c.confidence = 0.4;
        c.entropy = 0.5 * 4f32.ln();
        let mut cfg = config(4);
        assert!((uncertainty(&c, &cfg) - 0.8).abs() < 1e-6);
        cfg.uncertainty = Uncertainty::Entropy;
        assert!((uncertainty(&c, &cfg) - 0.5).abs() < 1e-6);
        cfg.uncertainty = Uncertainty::LeastConfidence;
        assert!((uncertainty(&c, &cfg) - 0.6 * 4.0 / 3.0).abs() < 1e-6);
        // Uniform probabilities are the most uncertain under every measure.
        c.confidence = 0.25;
        c.entropy = 4f32.ln();
        c.margin = 0.0;
        for u in [
            Uncertainty::Entropy,
            Uncertainty::Margin,
            Uncertainty::LeastConfidence,
        ] {
            cfg.uncertainty = u;
            assert!((uncertainty(&c, &cfg) - 1.0).abs() < 1e-6, "{u:?}");
        }
    }

    #[test]
    fn degenerate_summaries_stay_in_the_unit_interval() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(2));
        let mut c = candidate("a", 0, 0.2, &mut rng);
        for classes in [0, 1, 2, 10] {
            for u in [
                Uncertainty::Entropy,
                Uncertainty::Margin,
                Uncertainty::LeastConfidence,
            ] {
                let mut cfg = config(classes);
                cfg.uncertainty = u;
                for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -3.0, 7.0] {
                    (c.confidence, c.margin, c.entropy) = (v, v, v);
                    let x = uncertainty(&c, &cfg);
                    assert!((0.0..=1.0).contains(&x), "{u:?} {classes} {v}: {x}");
                }
            }
        }
        c.margin = f32::NAN;
        assert_eq!(uncertainty(&c, &config(3)), 0.0);
        let mut one = config(1);
        one.uncertainty = Uncertainty::Entropy;
        c.entropy = 2.0;
        assert_eq!(uncertainty(&c, &one), 0.0);
    }

    #[test]
    fn ood_distance_and_shift_boost_set_the_score_and_reasons_name_them() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(3));
        let mut c = candidate("a", 0, 0.6, &mut rng);
        let cfg = config(3);
        assert!((score(&c, &cfg) - 0.4).abs() < 1e-6);
        assert!(reasons(&c, &cfg).is_empty());
        // Out of distribution: the distance, not the uncertainty. Twice the radius with
        // ood_boost 1: 1 + 1 × (1 − 1/2) = 1.5, whatever the margin.
        c.ood = true;
        c.ood_score = 2.0;
        assert!((score(&c, &cfg) - 1.5).abs() < 1e-6);
        c.margin = 0.99;
        assert!((score(&c, &cfg) - 1.5).abs() < 1e-6);
        c.margin = 0.6;
        // A flagged candidate whose score is unknown (an old index, the offline log) counts
        // as just out: 1, still above every in-distribution candidate.
        for unknown in [0.0, 0.5, f32::NAN, f32::INFINITY] {
            c.ood_score = unknown;
            assert!((score(&c, &cfg) - 1.0).abs() < 1e-6, "{unknown}");
        }
        c.ood_score = 2.0;
        c.shifted = true;
        c.random = true;
        assert!((score(&c, &cfg) - 1.5 * 1.5).abs() < 1e-6);
        assert_eq!(
            reasons(&c, &cfg),
            [
                Reason::OodSuspect,
                Reason::ShiftedWindow,
                Reason::RandomSample
            ]
        );
        c.margin = 0.5;
        assert_eq!(reasons(&c, &cfg)[0], Reason::Uncertain);
        // Nonsense boosts do nothing rather than make the score negative or NaN.
        for b in [-5.0, f64::NAN, f64::INFINITY] {
            let weird = SelectionConfig {
                ood_boost: b,
                shift_boost: b,
                ..cfg.clone()
            };
            assert!((score(&c, &weird) - 1.0).abs() < 1e-6, "{b}");
        }
    }

    #[test]
    fn out_of_distribution_candidates_come_first_balanced_by_cluster_not_class() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(12));
        // 400 in distribution over 4 classes; 60 out of distribution, all predicted class 2
        // with near-zero uncertainty (confidently wrong), in three embedding clusters of
        // 40, 15 and 5.
        let mut pool: Vec<Candidate> = (0..400)
            .map(|i| candidate(&format!("in{i:03}"), i % 4, rng.unit() as f32, &mut rng))
            .collect();
        let centres = [[50.0, 0.0], [0.0, 50.0], [50.0, 50.0]];
        for i in 0..60 {
            let cluster = if i < 40 {
                0
            } else if i < 55 {
                1
            } else {
                2
            };
            let mut c = candidate(&format!("ood{i:02}"), 2, 0.999, &mut rng);
            c.ood = true;
            c.ood_score = (1.0 + 3.0 * rng.unit()) as f32;
            c.vector = centres[cluster]
                .iter()
                .map(|x| (x + rng.normal()) as f32)
                .collect();
            pool.push(c);
        }
        let cfg = SelectionConfig {
            ood_clusters: 3,
            ..config(4)
        };
        let chosen = select(&pool, 40, &cfg);
        assert_eq!(chosen.len(), 40);
        let ood: Vec<usize> = chosen.iter().copied().filter(|&i| pool[i].ood).collect();
        // Half the slots, first in the ranking.
        assert_eq!(ood.len(), 20);
        assert!(chosen[..20].iter().all(|&i| pool[i].ood));
        // Balanced over the clusters: 5 from the smallest, the rest shared by the other two.
        let cluster_of = |i: usize| {
            let v = &pool[i].vector;
            centres
                .iter()
                .position(|c| {
                    (v[0] as f64 - c[0]).abs() < 10.0 && (v[1] as f64 - c[1]).abs() < 10.0
                })
                .unwrap()
        };
        let mut per_cluster = [0; 3];
        for &i in &ood {
            per_cluster[cluster_of(i)] += 1;
        }
        assert_eq!(per_cluster, [8, 7, 5]);
        // The in-distribution half stays balanced by class.
        let in_distribution: Vec<usize> =
            chosen.iter().copied().filter(|&i| !pool[i].ood).collect();
        assert_eq!(count_by_class(&pool, &in_distribution, 4), [5, 5, 5, 5]);
        // Too few in distribution: the out-of-distribution group takes their slots, and back.
        let few_in: Vec<Candidate> = pool[390..].to_vec();
        let chosen = select(&few_in, 40, &cfg);
        assert_eq!(chosen.iter().filter(|&&i| !few_in[i].ood).count(), 10);
        assert_eq!(chosen.len(), 40);
        let few_out: Vec<Candidate> = pool[..405].to_vec();
        let chosen = select(&few_out, 40, &cfg);
        assert_eq!(chosen.iter().filter(|&&i| few_out[i].ood).count(), 5);
        assert_eq!(chosen.len(), 40);
        // No share: only what the others leave.
        let none = SelectionConfig {
            ood_share: 0.0,
            ..cfg.clone()
        };
        assert_eq!(
            select(&pool, 40, &none)
                .iter()
                .filter(|&&i| pool[i].ood)
                .count(),
            0
        );
    }

    #[test]
    fn quotas_balance_an_imbalanced_pool() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(4));
        // 90% class 0, and class 0 is also the most uncertain: without quotas it would take all.
        let pool: Vec<Candidate> = (0..600)
            .map(|i| {
                let class = if i < 540 { 0 } else { 1 + i % 3 };
                let margin = if class == 0 {
                    0.1 * rng.unit()
                } else {
                    0.2 + 0.8 * rng.unit()
                };
                candidate(&format!("r{i:04}"), class, margin as f32, &mut rng)
            })
            .collect();
        let chosen = select(&pool, 40, &config(4));
        let counts = count_by_class(&pool, &chosen, 4);
        println!("class counts {counts:?}");
        assert_eq!(chosen.len(), 40);
        assert_eq!(counts, [10, 10, 10, 10]);
        // 41 slots: the extra one goes to the class whose next candidate scores best (class 0).
        assert_eq!(
            count_by_class(&pool, &select(&pool, 41, &config(4)), 4),
            [11, 10, 10, 10]
        );
    }

    #[test]
    fn classes_without_candidates_give_their_slots_away() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(5));
        // Class 3 has none, class 2 has two: their 10 + 8 slots go to classes 0 and 1, equally.
        let pool: Vec<Candidate> = (0..300)
            .map(|i| {
                let class = if i < 2 { 2 } else { i % 2 };
                candidate(&format!("r{i:04}"), class, rng.unit() as f32, &mut rng)
            })
            .collect();
        let chosen = select(&pool, 40, &config(4));
        assert_eq!(count_by_class(&pool, &chosen, 4), [19, 19, 2, 0]);
        // A pool smaller than the limit is taken whole.
        assert_eq!(select(&pool[..30], 40, &config(4)).len(), 30);
    }

    #[test]
    fn no_two_selected_are_near_duplicates() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(6));
        let cfg = config(3);
        // 40 distinct images, each seen 10 times with up to 3 bits flipped (within threshold 4
        // of the original, so of each other within 6: not all pairs within 4).
        let originals: Vec<u64> = (0..40).map(|_| rng.next_u64()).collect();
        let mut pool = Vec::new();
        for (g, &h) in originals.iter().enumerate() {
            for copy in 0..10 {
                let mut c = candidate(
                    &format!("g{g:02}c{copy}"),
                    g % 3,
                    rng.unit() as f32,
                    &mut rng,
                );
                c.dhash = h;
                for _ in 0..rng.below(4) {
                    c.dhash ^= 1 << rng.below(64);
                }
                c.random = copy == 9;
                pool.push(c);
            }
        }
        for share in [0.0, 0.5] {
            let chosen = select(
                &pool,
                60,
                &SelectionConfig {
                    random_share: share,
                    ..cfg.clone()
                },
            );
            assert!(chosen.len() >= 40, "{}", chosen.len());
            for (n, &a) in chosen.iter().enumerate() {
                for &b in &chosen[..n] {
                    let d = hamming(pool[a].dhash, pool[b].dhash);
                    assert!(
                        d > cfg.dhash_threshold,
                        "{} {} at {d}",
                        pool[a].request_id,
                        pool[b].request_id
                    );
                }
            }
        }
        // The best-scored copy of each image is the one that survives.
        let best = by_score_first(&pool, &cfg, |c| c.request_id.starts_with("g07"));
        let chosen = select(&pool, 400, &cfg);
        assert!(chosen.iter().any(|&i| pool[i].request_id == best));
    }

    fn by_score_first(
        pool: &[Candidate],
        cfg: &SelectionConfig,
        keep: impl Fn(&Candidate) -> bool,
    ) -> String {
        pool.iter()
            .filter(|c| keep(c))
            .max_by(|a, b| {
                score(a, cfg)
                    .total_cmp(&score(b, cfg))
                    .then(b.request_id.cmp(&a.request_id))
            })
            .map(|c| c.request_id.clone())
            .unwrap_or_default()
    }

    #[test]
    fn the_near_duplicate_index_agrees_with_a_plain_scan() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(7));
        // Clustered hashes, so that every threshold finds some duplicates and some not.
        let bases: Vec<u64> = (0..30).map(|_| rng.next_u64()).collect();
        let hashes: Vec<u64> = (0..600)
            .map(|_| {
                let mut h = bases[rng.below(bases.len())];
                for _ in 0..rng.below(20) {
                    h ^= 1 << rng.below(64);
                }
                h
            })
            .collect();
        for threshold in [0, 1, 4, 8, 15, 16, 30, 64, u32::MAX] {
            let mut index = NearDuplicates::new(threshold);
            let mut kept: Vec<u64> = Vec::new();
            let mut dropped = 0;
            for &h in &hashes {
                let plain = kept.iter().all(|&k| hamming(h, k) > threshold);
                assert_eq!(index.insert_unless_near(h), plain, "threshold {threshold}");
                if plain {
                    kept.push(h);
                } else {
                    dropped += 1;
                }
            }
            if threshold >= 64 {
                assert_eq!(kept.len(), 1);
            }
            assert!(dropped > 0, "threshold {threshold}");
        }
    }

    /// Points around `clusters` seeded centres in 8 dimensions, of very different sizes.
    fn clustered_pool(rng: &mut Rng, clusters: usize, n: usize) -> Vec<Candidate> {
        let centres: Vec<Vec<f64>> = (0..clusters)
            .map(|_| (0..8).map(|_| 20.0 * rng.unit()).collect())
            .collect();
        // Cluster j holds a share proportional to 1 / (j + 1).
        let weights: f64 = (1..=clusters).map(|j| 1.0 / j as f64).sum();
        (0..n)
            .map(|i| {
                let mut u = rng.unit() * weights;
                let mut j = 0;
                while j + 1 < clusters && u >= 1.0 / (j + 1) as f64 {
                    u -= 1.0 / (j + 1) as f64;
                    j += 1;
                }
                let mut c = candidate(&format!("p{i:04}"), 0, rng.unit() as f32, rng);
                c.vector = centres[j]
                    .iter()
                    .map(|x| (x + rng.normal()) as f32)
                    .collect();
                c
            })
            .collect()
    }

    #[test]
    fn k_center_covers_better_than_random_choices() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(8));
        let pool = clustered_pool(&mut rng, 12, 600);
        let points: Vec<Vec<f32>> = pool.iter().map(|c| c.vector.clone()).collect();
        let k = 12;
        // A factor large enough that k-center sees the whole class.
        let cfg = SelectionConfig {
            candidate_pool_factor: 50,
            ..config(1)
        };
        let chosen = select(&pool, k, &cfg);
        assert_eq!(chosen.len(), k);
        let k_center_radius = coverage_radius(&points, &chosen);
        let random_radii: Vec<f64> = (0..20)
            .map(|_| {
                let mut order: Vec<usize> = (0..pool.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i + 1));
                }
                coverage_radius(&points, &order[..k])
            })
            .collect();
        let random_mean = random_radii.iter().sum::<f64>() / random_radii.len() as f64;
        let top_by_score = select(
            &pool,
            k,
            &SelectionConfig {
                candidate_pool_factor: 1,
                ..cfg
            },
        );
        let top_radius = coverage_radius(&points, &top_by_score);
        println!(
            "coverage radius, {k} of {}: k-center {k_center_radius:.3}, random (mean of 20) {random_mean:.3}, top by score {top_radius:.3}",
            pool.len()
        );
        assert!(
            k_center_radius < random_mean,
            "{k_center_radius} vs {random_mean}"
        );
        assert!(
            k_center_radius < top_radius,
            "{k_center_radius} vs {top_radius}"
        );
    }

    #[test]
    fn coverage_radius_edge_cases() {
        let points = vec![vec![0.0, 0.0], vec![3.0, 4.0], vec![6.0, 8.0]];
        assert_eq!(coverage_radius(&points, &[0]), 10.0);
        assert_eq!(coverage_radius(&points, &[1]), 5.0);
        assert_eq!(coverage_radius(&points, &[0, 1, 2]), 0.0);
        assert_eq!(coverage_radius(&points, &[]), f64::INFINITY);
        assert_eq!(coverage_radius(&points, &[7]), f64::INFINITY);
        assert_eq!(coverage_radius(&[], &[0]), 0.0);
        // Ragged and non-finite vectors count missing or bad components as 0.
        assert_eq!(
            coverage_radius(&[vec![3.0], vec![0.0, 4.0, f32::NAN]], &[0]),
            5.0
        );
    }

    #[test]
    fn the_random_share_is_honoured() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(9));
        // Random-sample members are the least uncertain: they only get in through their share.
        let pool: Vec<Candidate> = (0..400)
            .map(|i| {
                let random = i % 4 == 0;
                let margin = if random {
                    0.95
                } else {
                    0.5 * rng.unit() as f32
                };
                let mut c = candidate(&format!("r{i:04}"), i % 3, margin, &mut rng);
                c.random = random;
                c
            })
            .collect();
        let randoms = |chosen: &[usize]| chosen.iter().filter(|&&i| pool[i].random).count();
        for (limit, share, expected) in [
            (50, 0.1, 5),
            (30, 0.1, 3),
            (7, 0.1, 1),
            (20, 0.0, 0),
            (10, 1.0, 10),
            (10, 2.0, 10),
        ] {
            let cfg = SelectionConfig {
                random_share: share,
                ..config(3)
            };
            let chosen = select(&pool, limit, &cfg);
            assert_eq!(chosen.len(), limit);
            assert_eq!(randoms(&chosen), expected, "limit {limit} share {share}");
        }
        // Random members rank among the rest by score: here, last.
        let chosen = select(
            &pool,
            50,
            &SelectionConfig {
                random_share: 0.1,
                ..config(3)
            },
        );
        assert!(chosen[45..].iter().all(|&i| pool[i].random));
        // A sample smaller than its share leaves the other slots to the rest.
        let few: Vec<Candidate> = pool
            .iter()
            .filter(|c| !c.random || c.request_id == "r0000")
            .cloned()
            .collect();
        let chosen = select(
            &few,
            20,
            &SelectionConfig {
                random_share: 0.5,
                ..config(3)
            },
        );
        assert_eq!(
            (
                chosen.len(),
                chosen.iter().filter(|&&i| few[i].random).count()
            ),
            (20, 1)
        );
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(10));
        let cfg = config(3);
        assert!(select(&[], 10, &cfg).is_empty());
        let pool: Vec<Candidate> = (0..50)
            .map(|i| candidate(&format!("r{i:02}"), i % 7, rng.unit() as f32, &mut rng))
            .collect();
        assert!(select(&pool, 0, &cfg).is_empty());
        // Classes 3..7 are outside the configured 3: they only fill what classes 0..3 leave.
        let chosen = select(&pool, 12, &cfg);
        assert_eq!(count_by_class(&pool, &chosen, 7)[..3], [4, 4, 4]);
        let chosen = select(&pool, 50, &cfg);
        assert_eq!(chosen.len(), 50);
        // No classes at all, a huge class count, a huge limit, no pool factor, NaN everywhere.
        for classes in [0, usize::MAX] {
            assert_eq!(select(&pool, 10, &config(classes)).len(), 10, "{classes}");
        }
        assert_eq!(select(&pool, usize::MAX, &cfg).len(), 50);
        let weird = SelectionConfig {
            random_share: f64::NAN,
            candidate_pool_factor: 0,
            dhash_threshold: u32::MAX,
            ..cfg.clone()
        };
        assert_eq!(select(&pool, 10, &weird).len(), 1);
        let mut nan = pool.clone();
        for c in &mut nan {
            (c.margin, c.confidence, c.entropy) = (f32::NAN, f32::NAN, f32::NAN);
            c.vector = vec![f32::NAN; rng.below(4)];
        }
        let chosen = select(
            &nan,
            9,
            &SelectionConfig {
                random_share: 1.5,
                ..cfg
            },
        );
        assert_eq!(chosen.len(), 9);
    }

    #[test]
    fn selection_is_deterministic_and_independent_of_pool_order() {
        let mut rng = Rng(crate::stats::random::SplitMix64::new(11));
        let mut pool = clustered_pool(&mut rng, 5, 300);
        for (i, c) in pool.iter_mut().enumerate() {
            c.predicted_class = i % 4;
            c.random = i % 5 == 0;
            // Many exact ties in score, broken by request_id.
            c.margin = (c.margin * 4.0).round() / 4.0;
        }
        let cfg = SelectionConfig {
            random_share: 0.2,
            ..config(4)
        };
        let ids = |pool: &[Candidate], chosen: Vec<usize>| -> Vec<String> {
            chosen
                .into_iter()
                .map(|i| pool[i].request_id.clone())
                .collect()
        };
        let first = ids(&pool, select(&pool, 30, &cfg));
        assert_eq!(first.len(), 30);
        assert_eq!(ids(&pool, select(&pool, 30, &cfg)), first);
        pool.reverse();
        assert_eq!(ids(&pool, select(&pool, 30, &cfg)), first);
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.below(i + 1));
        }
        assert_eq!(ids(&pool, select(&pool, 30, &cfg)), first);
        // Best first.
        let chosen = select(&pool, 30, &cfg);
        assert!(
            chosen
                .windows(2)
                .all(|w| score(&pool[w[0]], &cfg) >= score(&pool[w[1]], &cfg))
        );
    }
}
