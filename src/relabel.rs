//! Relabel candidates: keep the few images worth a labeler's time, and export them.
//!
//! The request path scores each prediction ([`select::score`]: uncertainty, raised for
//! out-of-distribution inputs and shifted windows) and offers it to the [`Candidates`] store only
//! when it would enter the bounded pool, or when a coin flip puts it in the uniform random
//! sample. The store's thread writes the image bytes under `candidates.dir`, evicts by score,
//! age and disk quota, and keeps an index so the pool survives restarts and offline export.
//! [`select::select`] picks a balanced, diverse, de-duplicated set; [`export::write_package`]
//! writes it for Label Studio.

mod config;
pub mod export;
pub mod offline;
pub mod ood;
pub mod select;
mod store;

pub use self::config::{CandidatesConfig, RawCandidates};
pub use self::store::{
    Admit, CandidateMetrics, Candidates, Offer, StoredCandidate, read_index, sample_key,
    sample_noise,
};
