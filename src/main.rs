use clap::Parser;

/// jemalloc instead of glibc's malloc (through [`allocator::Allocator`]): the request path
/// frees much of what other threads allocated (inference outputs, log rows, replies), which
/// glibc's per-thread arenas handle with locks and slow paths; with jemalloc a request took 18
/// to 25% less CPU (README, performance). Its background thread returns freed memory to the
/// system, off the request path.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod allocator {
    /// jemalloc, but zeroed blocks up to [`ZEROED_BY_MEMSET`] are cleared by hand. jemalloc
    /// clears a reused large block (from 16 KiB) by handing its pages back to the kernel
    /// (`madvise(MADV_DONTNEED)`) and takes a page fault on each page at the next write: the heavy
    /// model's tensor and decoded photo (`vec![0; n]`) cost 246 page faults a request that way,
    /// about 10% of its CPU, against 1 with glibc's `malloc`. Clearing them in place costs a pass
    /// over memory the request writes next anyway.
    pub struct Allocator;

    /// Above this, a zeroed block comes from jemalloc as before: pages fresh from the kernel are
    /// zero already, and a pass over hundreds of megabytes would cost more than their faults.
    const ZEROED_BY_MEMSET: usize = 16 << 20;

    // SAFETY: every call is jemalloc's own for the same layout; `alloc_zeroed` adds only a write of
    // zeros over the block jemalloc just returned (non-null, `layout.size()` bytes).
    unsafe impl std::alloc::GlobalAlloc for Allocator {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.size() > ZEROED_BY_MEMSET {
                // SAFETY: the caller's contract, passed on.
                return unsafe { tikv_jemallocator::Jemalloc.alloc_zeroed(layout) };
            }
            // SAFETY: the caller's contract, passed on; a non-null block is `layout.size()` bytes.
            unsafe {
                let block = tikv_jemallocator::Jemalloc.alloc(layout);
                if !block.is_null() {
                    std::ptr::write_bytes(block, 0, layout.size());
                }
                block
            }
        }

        unsafe fn dealloc(&self, block: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { tikv_jemallocator::Jemalloc.dealloc(block, layout) }
        }

        unsafe fn realloc(
            &self,
            block: *mut u8,
            layout: std::alloc::Layout,
            size: usize,
        ) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            unsafe { tikv_jemallocator::Jemalloc.realloc(block, layout, size) }
        }
    }

    /// jemalloc's options, read when it starts (the variable `_RJEM_MALLOC_CONF` overrides them).
    #[allow(non_upper_case_globals)]
    #[unsafe(export_name = "_rjem_malloc_conf")]
    pub static malloc_conf: &[u8; 48] = b"background_thread:true,max_background_threads:1\0";
}

fn main() -> std::process::ExitCode {
    shiftwatch::cli::run(shiftwatch::cli::Cli::parse())
}
