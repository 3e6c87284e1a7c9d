//! shiftwatch: a sidecar that serves an ONNX image classifier and watches it for
//! overconfidence and shift. See ARCHITECTURE.md for the map.

pub mod accuracy;
pub mod api;
pub mod cli;
pub mod config;
pub mod feedback;
pub mod fuzz;
pub mod image_stats;
pub mod inference;
pub mod log;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod prediction;
pub mod preprocess;
pub mod profile;
pub mod progress;
pub mod relabel;
pub mod report;
pub mod server;
pub mod service;
pub mod stats;
pub mod telemetry;
pub mod time;
