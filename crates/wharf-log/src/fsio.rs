//! Small file-system helpers: positioned vectored writes, positioned reads, atomic file replacement and
//! directory fsync. All of them name the path in their errors.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Most slices one [`write_all_at_vectored`] call takes (the held tail, a frame header, a payload).
const MAX_PARTS: usize = 4;

/// Writes `parts` back to back at `pos` with as few `pwritev` calls as the kernel allows (normally one).
pub fn write_all_at_vectored(file: &File, parts: &[&[u8]], pos: u64) -> io::Result<()> {
    if parts.len() > MAX_PARTS {
        return Err(io::Error::other("too many slices for one vectored write"));
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0usize;
    while done < total {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS];
        let mut count = 0;
        let mut skip = done;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let rest = &part[skip..];
            skip = 0;
            iov[count] = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            count += 1;
        }
        let offset = libc::off_t::try_from(pos + done as u64)
            .map_err(|_| io::Error::other("file offset overflow"))?;
        // SAFETY: the first `count` iovecs point into `parts`, which outlive the call; the fd is open.
        let n =
            unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count as libc::c_int, offset) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads exactly `len` bytes at `pos` into a new buffer.
///
/// The buffer is not zeroed first: `pread` fills its spare capacity and the length grows only by what was
/// read. Zeroing a fresh multi-megabyte buffer on every fetch cost as much as the read itself.
pub fn read_at(file: &File, path: &Path, pos: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let offset = libc::off_t::try_from(pos + filled as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read offset overflows off_t"))
            .at(path)?;
        // SAFETY: the destination is the vector's spare capacity, `len - filled` bytes starting right after
        // its initialised part; pread writes at most that many bytes there and nothing else.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                len - filled,
                offset,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).at(path);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ended before the requested range",
            ))
            .at(path);
        }
        // SAFETY: pread initialised `n` more bytes, and `filled + n <= len <= capacity`.
        unsafe { buf.set_len(filled + n as usize) };
    }
    Ok(buf)
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces `path` with `bytes` atomically: write a temp file, fsync it, rename it over `path`, fsync the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(match path.extension() {
        Some(e) => format!("{}.tmp", e.to_string_lossy()),
        None => "tmp".to_string(),
    });
    {
        let f = File::create(&tmp).at(&tmp)?;
        f.write_all_at(bytes, 0).at(&tmp)?;
        f.sync_data().at(&tmp)?;
    }
    std::fs::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
