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

/// How often [`release_free_memory`] looks at the heap at most: asking
/// the allocator how much is free walks its free lists, which cost more
/// than the rest of it each round at a 1 s interval.
pub const RELEASE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives the free pages of the heap back to the kernel when more than
/// [`RELEASE_ABOVE_BYTES`] have come free since it last did, looking at
/// most every [`RELEASE_CHECK_EVERY`] (a call in between does nothing; the
/// first looks). (Free bytes the kernel already has back still count as
/// free to the allocator, so the total alone would have it trim every
/// round once that much was.) The heap's free top goes back as soon as it
/// passes [`RELEASE_ABOVE_BYTES`] either way (see [`one_heap`]): what waits
/// is free memory below the top.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Instant;
        /// Free heap bytes right after the last trim.
        static AFTER_TRIM: AtomicUsize = AtomicUsize::new(0);
        /// When the heap was last looked at.
        static LOOKED: Mutex<Option<Instant>> = Mutex::new(None);
        {
            let mut looked = LOOKED.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if looked.is_some_and(|t| now.duration_since(t) < RELEASE_CHECK_EVERY) {
                return;
            }
            *looked = Some(now);
        }
        // SAFETY: mallinfo2 only reads the allocator's statistics and
        // malloc_trim only returns free memory to the kernel.
        unsafe {
            let free = libc::mallinfo2().fordblks;
            if free > AFTER_TRIM.load(Ordering::Relaxed) + RELEASE_ABOVE_BYTES {
                libc::malloc_trim(0);
                AFTER_TRIM.store(libc::mallinfo2().fordblks, Ordering::Relaxed);
            } else if free < AFTER_TRIM.load(Ordering::Relaxed) {
                // Holes were reused: measure growth from here.
                AFTER_TRIM.store(free, Ordering::Relaxed);
            }
        }
    }
}

/// Unmaps the pages of the read-only segments of the program and its
/// shared libraries (their code, their constants, and the relocation
/// tables the loader read once), so that only what the agent runs from
/// then on comes back.
///
/// A mapped file's pages count as resident from their first use, and the
/// kernel maps the cached pages around each one touched (64 KiB and more
/// at a time): argument and config parsing, the loader's relocation tables,
/// libc's start-up and whatever lies beside them stayed resident for the
/// agent's life (about 1.5 MiB in the footprint bench). The pages stay in
/// the page cache, so the code the agent goes on to run comes back at the
/// cost of a minor fault per block, once.
///
/// Only `PT_LOAD` segments that are not writable are touched, rounded
/// inward to whole pages: never data, nor relocated read-only data (whose
/// pages the loader wrote). An object with text relocations (whose code
/// the loader wrote too) and the vDSO (no file behind it) are left alone.
/// Called once, after the first sampling round (start-up is done then).
/// On 64-bit glibc Linux only (the dynamic entries are read as 64-bit
/// pairs); elsewhere it does nothing.
pub fn release_start_up_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    // SAFETY: the callback only reads the program headers and dynamic
    // sections glibc passes it and advises the kernel on pages of
    // read-only file mappings.
    unsafe {
        libc::dl_iterate_phdr(Some(unmap_read_only_segments), std::ptr::null_mut());
    }
}

/// `PT_DYNAMIC`, `DT_TEXTREL`, `DT_FLAGS` and its `DF_TEXTREL` bit (ELF).
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const PT_DYNAMIC: u32 = 2;
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const DT_TEXTREL: i64 = 22;
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const DT_FLAGS: i64 = 30;
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const DF_TEXTREL: u64 = 4;

/// The `dl_iterate_phdr` callback, called for each loaded object.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
unsafe extern "C" fn unmap_read_only_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: glibc passes a valid `dl_phdr_info` whose `dlpi_phdr` points
    // at `dlpi_phnum` program headers; the segments they describe, the
    // dynamic section among them, are mapped at `dlpi_addr` plus their
    // addresses, and a dynamic section ends with a null tag.
    unsafe {
        let Some(info) = info.as_ref() else {
            return 0;
        };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        if !info.dlpi_name.is_null() {
            let name = std::ffi::CStr::from_ptr(info.dlpi_name).to_bytes();
            if name.starts_with(b"linux-vdso") || name.starts_with(b"linux-gate") {
                return 0;
            }
        }
        let page = match usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)) {
            Ok(p) if p > 0 => p,
            _ => return 1,
        };
        let base = info.dlpi_addr as usize;
        let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
        for h in headers.iter().filter(|h| h.p_type == PT_DYNAMIC) {
            let mut entry = (base + h.p_vaddr as usize) as *const [u64; 2];
            loop {
                let [tag, value] = *entry;
                let tag = tag as i64;
                if tag == 0 {
                    break;
                }
                if tag == DT_TEXTREL || (tag == DT_FLAGS && value & DF_TEXTREL != 0) {
                    return 0;
                }
                entry = entry.add(1);
            }
        }
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            let first = base + h.p_vaddr as usize;
            let start = first.next_multiple_of(page);
            let end = (first + h.p_memsz as usize) / page * page;
            if end > start {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    0
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident pages of mapped files, in KiB.
    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn start_up_pages_go_and_the_code_still_runs() {
        let before = resident_file_kib();
        release_start_up_pages();
        let after = resident_file_kib();
        assert!(
            after < before,
            "resident file pages {before} -> {after} KiB"
        );
        // Code, constants and data work as before: the pages come back.
        let text = format!("{:?}", (1..=3).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(text, "[2, 4, 6]");
        assert_eq!(RELEASE_ABOVE_BYTES, 1 << 20);
        release_start_up_pages();
    }
}
