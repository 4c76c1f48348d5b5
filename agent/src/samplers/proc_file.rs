//! A file under /proc that a sampler reads again every round. On procfs
//! it is opened once and re-read from offset 0 with `pread` (the kernel
//! builds the text anew for a read from the start), into a buffer kept
//! between rounds, so a round costs no path lookup, open or close per
//! file. A file elsewhere (a test fixture under another root) is opened
//! for every read, so one changed, replaced or removed between rounds is
//! read as it is then.
//!
//! It never writes, and holds one descriptor and one buffer per file.

use super::SampleError;
use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// procfs's `f_type` (`PROC_SUPER_MAGIC` in linux/magic.h).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Bytes asked for per `pread`: most /proc files the samplers read fit in
/// one.
const READ_CHUNK: usize = 16 << 10;

/// One file re-read each round.
#[derive(Debug)]
pub(crate) struct ProcFile {
    path: PathBuf,
    /// Kept open while it is on procfs.
    file: Option<File>,
    /// Zero-filled once as it grows, never again: a read writes over the
    /// bytes the last one left, and only `buf[..filled]` is the file.
    buf: Vec<u8>,
    /// How much of `buf` the last read filled.
    filled: usize,
}

impl ProcFile {
    /// The file at `path`, not opened yet.
    pub(crate) fn new(path: PathBuf) -> Self {
        ProcFile {
            path,
            file: None,
            buf: Vec::new(),
            filled: 0,
        }
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file as it is now.
    pub(crate) fn read(&mut self) -> io::Result<&[u8]> {
        self.filled = 0;
        if let Some(file) = &self.file {
            if let Ok(n) = read_whole(file, &mut self.buf) {
                self.filled = n;
                return Ok(&self.buf[..n]);
            }
            // Opened again below: the error may have been the old
            // descriptor's alone.
            self.file = None;
        }
        let file = File::open(&self.path)?;
        let n = read_whole(&file, &mut self.buf)?;
        self.filled = n;
        if is_procfs(&file) {
            self.file = Some(file);
        }
        Ok(&self.buf[..n])
    }

    /// The whole file as text. Invalid UTF-8 (possible only in device
    /// names) is replaced rather than failing the file: values are ASCII
    /// digits anyway.
    pub(crate) fn text(&mut self) -> Result<Cow<'_, str>, SampleError> {
        match self.read() {
            Ok(_) => Ok(String::from_utf8_lossy(&self.buf[..self.filled])),
            Err(source) => Err(SampleError::Read {
                path: self.path.display().to_string(),
                source,
            }),
        }
    }
}

/// Reads `file` from offset 0 to its end into the start of `buf`,
/// returning how many bytes it has. `buf` only grows, by zero-filled
/// chunks, when the file no longer fits: what a file's earlier read left
/// behind its end is not part of it and is never zeroed again.
fn read_whole(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut filled = 0;
    loop {
        if buf.len() - filled < READ_CHUNK {
            buf.resize(filled + READ_CHUNK, 0);
        }
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `file` is on procfs, whose files give fresh contents on every
/// read from the start.
fn is_procfs(file: &File) -> bool {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes a whole statfs into the buffer on success and
    // reads nothing from it; the descriptor is open for the call.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) };
    rc == 0 && {
        // SAFETY: on success fstatfs filled the struct. (f_type's integer
        // type differs between architectures.)
        #[allow(clippy::unnecessary_cast)]
        let f_type = unsafe { fs.assume_init() }.f_type as i64;
        f_type == PROC_SUPER_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_file_is_kept_open_and_read_fresh() {
        let mut f = ProcFile::new(PathBuf::from("/proc/self/stat"));
        let first = f.text().expect("read /proc/self/stat").into_owned();
        assert!(f.file.is_some(), "kept open on procfs");
        // Field 10 is minflt: reading again after touching fresh pages
        // (a new anonymous mapping, so the allocator cannot hand back
        // pages already touched) shows the kernel made the text anew.
        let len = 64 * 4096;
        // SAFETY: a new private anonymous mapping of `len` bytes, written
        // within its bounds and unmapped once.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            for page in (0..len).step_by(4096) {
                std::ptr::write_volatile(p.cast::<u8>().add(page), 1);
            }
            libc::munmap(p, len);
        }
        let second = f.text().expect("read again").into_owned();
        assert_ne!(first, second);
        assert!(second.starts_with(&format!("{} (", std::process::id())));
    }

    #[test]
    fn a_file_elsewhere_is_read_as_it_is_at_each_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut f = ProcFile::new(path.clone());
        assert!(matches!(f.text(), Err(SampleError::Read { .. })));
        std::fs::write(&path, "one").unwrap();
        assert_eq!(f.text().unwrap(), "one");
        assert!(f.file.is_none());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "two, longer than one").unwrap();
        assert_eq!(f.text().unwrap(), "two, longer than one");
        // Shorter again: nothing of the longer read shows behind it.
        std::fs::write(&path, "3").unwrap();
        assert_eq!(f.text().unwrap(), "3");
        assert_eq!(f.read().unwrap(), b"3");
        std::fs::remove_file(&path).unwrap();
        assert!(f.read().is_err());
    }

    #[test]
    fn files_longer_than_one_read_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let text: String = (0..20_000).map(|i| format!("{i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut f = ProcFile::new(path.clone());
        assert_eq!(f.text().unwrap(), text);
        std::fs::write(&path, &text[..100]).unwrap();
        assert_eq!(f.text().unwrap(), &text[..100]);
        let mut mounts = ProcFile::new(PathBuf::from("/proc/self/mountinfo"));
        let once = mounts.read().unwrap().to_vec();
        assert_eq!(once, std::fs::read("/proc/self/mountinfo").unwrap());
    }
}
