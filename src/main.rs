use clap::Parser;

/// jemalloc instead of glibc's malloc: the request path frees much of what other threads
/// allocated (inference outputs, log rows, replies), which glibc's per-thread arenas handle
/// with locks and slow paths; with jemalloc a request took 18 to 25% less CPU (README,
/// performance). Its background thread returns freed memory to the system, off the request
/// path.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (the variable `_RJEM_MALLOC_CONF` overrides them).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 48] = b"background_thread:true,max_background_threads:1\0";

fn main() -> std::process::ExitCode {
    shiftwatch::cli::run(shiftwatch::cli::Cli::parse())
}
