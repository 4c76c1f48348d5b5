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

/// Allocations from this size up get pages of their own, returned to the
/// kernel when freed.
pub const OWN_PAGES_FROM_BYTES: usize = 64 << 10;

/// One allocator arena for every thread, and big buffers outside it.
/// Call before any thread starts.
///
/// glibc raises its threshold for giving an allocation pages of its own
/// each time such an allocation is freed, so after a start-up of large
/// transient buffers (a first spool record with every definition, its
/// compression) later ones of that size are carved from the heap, where
/// they leave holes that small allocations fill and pin. A fixed threshold
/// keeps buffers of [`OWN_PAGES_FROM_BYTES`] and more out of the heap;
/// the heap's free top is given back once more than
/// [`RELEASE_ABOVE_BYTES`] of it is free, as after a round.
pub fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; these are valid
    // parameters with valid values.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM_BYTES as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, RELEASE_ABOVE_BYTES as libc::c_int);
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
