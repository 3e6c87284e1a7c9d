//! Integration tests: the real binary, the real ONNX Runtime, real sockets on loopback.

mod support;

mod candidates;
mod estimates;
mod fleet;
mod fuzz;
mod hostile;
mod log;
mod models;
mod monitor;
mod prometheus;
mod report;
mod serve;
mod upload;
