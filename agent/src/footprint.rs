//! Keeping the agent's resident memory small: glibc's allocator gives
//! every thread that allocates its own arena (up to eight per core), and
//! each keeps the pages it once used. The agent allocates a round's
//! samples, batches and buffers on a few threads, so it uses one heap and
//! hands freed pages back to the kernel after a round that left much of
//! it free. (A round reuses most of what the last one allocated: trimming
//! after each would only have the kernel fault the same pages in again.)
//!
//! Its start-up code is not kept resident either: see
//! [`release_start_up_pages`].
//!
//! Only the agent binary calls these; the collector (which runs an agent
//! in-process) keeps the allocator's defaults and its pages. Elsewhere
//! than glibc on Linux they do nothing. Nothing here may touch memory the
//! program wrote: only pages the kernel can read back from the binary.

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

/// Unmaps the pages of the program's read-only segments (its code, its
/// constants, and the relocation tables the loader read once), so that only
/// what the agent runs from then on comes back.
///
/// A mapped file's pages count as resident from their first use, and the
/// kernel maps the cached pages around each one touched (64 KiB and more
/// at a time): argument and config parsing, the loader's relocation tables
/// and whatever lies beside them stayed resident for the agent's life
/// (about 1 MiB in the footprint bench). The pages stay in the page cache,
/// so the code the agent goes on to run comes back at the cost of a minor
/// fault per block, once. Only `PT_LOAD` segments that are not writable
/// are touched (never the data, nor the relocated read-only data, whose
/// pages the loader wrote), rounded inward to whole pages. Call once
/// start-up is done, before the first round.
pub fn release_start_up_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: the callback only reads the program headers glibc passes it
    // and advises the kernel on pages of read-only file mappings.
    unsafe {
        libc::dl_iterate_phdr(Some(unmap_read_only_segments), std::ptr::null_mut());
    }
}

/// The `dl_iterate_phdr` callback: its first object is the program.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" fn unmap_read_only_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: glibc passes a valid `dl_phdr_info` whose `dlpi_phdr` points
    // at `dlpi_phnum` program headers; the segments they describe are
    // mapped at `dlpi_addr` plus their addresses.
    unsafe {
        let Some(info) = info.as_ref() else {
            return 1;
        };
        let page = match usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)) {
            Ok(p) if p > 0 => p,
            _ => return 1,
        };
        if info.dlpi_phdr.is_null() {
            return 1;
        }
        let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            let first = info.dlpi_addr as usize + h.p_vaddr as usize;
            let start = first.next_multiple_of(page);
            let end = (first + h.p_memsz as usize) / page * page;
            if end > start {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    // Only the program: the shared libraries' pages are shared.
    1
}
