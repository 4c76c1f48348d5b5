//! Keeping the agent's resident memory small: glibc's allocator gives
//! every thread that allocates its own arena (up to eight per core), and
//! each keeps the pages it once used. The agent allocates a round's
//! samples, batches and buffers on a few threads, so it uses one heap and
//! hands freed pages back to the kernel after a round that left much of
//! it free. (A round reuses most of what the last one allocated: trimming
//! after each would only have the kernel fault the same pages in again.)
//!
//! Only the agent binary calls these; the collector (which runs an agent
//! in-process) keeps the allocator's defaults. Elsewhere than glibc they do
//! nothing.

/// One allocator arena for every thread. Call before any thread starts.
pub fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; M_ARENA_MAX is
    // a valid parameter and 1 a valid value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Free heap bytes above which they are given back.
pub const RELEASE_ABOVE_BYTES: usize = 1 << 20;

/// Gives the free pages of the heap back to the kernel when more than
/// [`RELEASE_ABOVE_BYTES`] of it are free.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's statistics and
    // malloc_trim only returns free memory to the kernel.
    unsafe {
        if libc::mallinfo2().fordblks > RELEASE_ABOVE_BYTES {
            libc::malloc_trim(0);
        }
    }
}
