//! Owning the data directory: exclusive lock and on-disk format version.
//!
//! Two brokers writing the same logs would corrupt them, so the first one takes `flock(LOCK_EX|LOCK_NB)` on
//! `<data-dir>/LOCK` and keeps the file open for its whole life; the kernel drops the lock when the process
//! dies, however it dies, so there is no stale lock to clean up. The pid written into the file is only there
//! to make the second broker's error message useful.
//!
//! `<data-dir>/FORMAT` records the layout version of everything else in the directory, so a broker never
//! reads data written in a layout it does not understand (after a downgrade, or a directory from a newer
//! release): it refuses to start instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the format-version file inside the data directory.
pub const FORMAT_FILE: &str = "FORMAT";
/// The on-disk layout this build writes.
/// - 2: a vhost's durable AMQP topology is a log of changes (`logs/__amqp.definitions`), no longer
///   `amqp/vhosts/<key>/definitions.json`; a build that knew only 1 would find no definitions and delete
///   every durable queue's logs as orphans, so it must refuse a directory once this build has used it.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest layout this build reads: an older directory is upgraded in place (its FORMAT rewritten at start;
/// the definitions file is folded into the log when its vhost first opens).
pub const FORMAT_VERSION_OLDEST: u32 = 1;
/// First word of the FORMAT file; the version number follows.
const FORMAT_MAGIC: &str = "wharf-data-format";
/// Bound on how much of a FORMAT file is read: a valid one is about 20 bytes.
const FORMAT_FILE_BYTES_MAX: u64 = 4096;

/// A data directory locked by this process. The lock lasts as long as this value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held open only for the lock it carries.
    _lock: File,
}

impl DataDir {
    /// Creates the directory if missing, locks it, and checks (or, on first start, writes) its format.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let lock = lock(path)?;
        check_or_create_format(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock on `<dir>/LOCK` and writes our pid into it.
fn lock(dir: &Path) -> anyhow::Result<File> {
    let lock_path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false) // another broker may hold it: its pid must stay readable
        .mode(0o644)
        .open(&lock_path)
        .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
    loop {
        // SAFETY: flock only reads the descriptor number; `file` keeps it open for the duration.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                let pid = read_pid(&mut file)
                    .map(|pid| format!("pid {pid}"))
                    .unwrap_or_else(|| "pid unknown".to_string());
                bail!(
                    "data directory {} is in use by another wharf process ({pid})",
                    dir.display()
                );
            }
            _ => {
                return Err(err).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
    }
    let write_pid = |file: &mut File| -> io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_data()
    };
    write_pid(&mut file)
        .with_context(|| format!("cannot write pid into {}", lock_path.display()))?;
    Ok(file)
}

/// The pid the lock holder wrote, if it can be read (it may be mid-write).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Verifies `<dir>/FORMAT`, or creates it when absent (first start).
fn check_or_create_format(dir: &Path) -> anyhow::Result<()> {
    let format_path = dir.join(FORMAT_FILE);
    match File::open(&format_path) {
        Ok(file) => {
            let mut raw = Vec::new();
            file.take(FORMAT_FILE_BYTES_MAX)
                .read_to_end(&mut raw)
                .with_context(|| format!("cannot read {}", format_path.display()))?;
            let text = String::from_utf8_lossy(&raw);
            match parse_format(&text) {
                Some(FORMAT_VERSION) => Ok(()),
                Some(found) if (FORMAT_VERSION_OLDEST..FORMAT_VERSION).contains(&found) => {
                    let contents = format!("{FORMAT_MAGIC} {FORMAT_VERSION}\n");
                    write_atomically(&format_path, contents.as_bytes())?;
                    tracing::info!(dir = %dir.display(), from = found, to = FORMAT_VERSION, "upgraded data directory format");
                    Ok(())
                }
                Some(found) => bail!(
                    "data directory {} has format version {found} (in {}), but this wharf supports only \
                     format versions {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}; refusing to start",
                    dir.display(),
                    format_path.display()
                ),
                None => {
                    let shown: String = text.chars().take(64).collect();
                    bail!(
                        "data directory {} has an unreadable format file {}: expected \
                         '{FORMAT_MAGIC} {FORMAT_VERSION}', found {shown:?}; this wharf supports only \
                         format versions {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}; refusing to start",
                        dir.display(),
                        format_path.display()
                    )
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let contents = format!("{FORMAT_MAGIC} {FORMAT_VERSION}\n");
            write_atomically(&format_path, contents.as_bytes())?;
            tracing::info!(dir = %dir.display(), version = FORMAT_VERSION, "initialised data directory");
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("cannot open {}", format_path.display())),
    }
}

/// `wharf-data-format N` (surrounding whitespace allowed) → `N`.
fn parse_format(text: &str) -> Option<u32> {
    let mut words = text.split_whitespace();
    let (Some(FORMAT_MAGIC), Some(version), None) = (words.next(), words.next(), words.next())
    else {
        return None;
    };
    version.parse().ok()
}

/// Writes `path` so that it is either absent or complete, even across a crash: write `<path>.tmp`, fsync
/// it, rename it over `path`, fsync the directory so the rename itself is durable.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

/// fsyncs a directory, making file creations, renames and deletions in it durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_open_creates_dir_lock_and_format() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let data = DataDir::open(&dir).unwrap();
        assert_eq!(data.path(), dir);
        assert_eq!(
            std::fs::read_to_string(dir.join(FORMAT_FILE)).unwrap(),
            "wharf-data-format 2\n"
        );
        let pid: u32 = std::fs::read_to_string(dir.join(LOCK_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
        assert!(!dir.join("FORMAT.tmp").exists());
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        // flock locks belong to the open file description, so a second open in the same process conflicts.
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path()).unwrap();
        let err = format!("{:#}", DataDir::open(tmp.path()).unwrap_err());
        assert!(err.contains("is in use by another wharf process"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn format_versions() {
        assert_eq!(parse_format("wharf-data-format 1\n"), Some(1));
        assert_eq!(parse_format("  wharf-data-format 7  "), Some(7));
        assert_eq!(parse_format("wharf-data-format"), None);
        assert_eq!(parse_format("wharf-data-format 1 2"), None);
        assert_eq!(parse_format("other-format 1"), None);
        assert_eq!(parse_format(""), None);

        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FORMAT_FILE), "wharf-data-format 3\n").unwrap();
        let err = format!("{:#}", DataDir::open(tmp.path()).unwrap_err());
        assert!(err.contains("format version 3"), "{err}");
        assert!(
            err.contains("supports only format versions 1 to 2"),
            "{err}"
        );

        // An older layout this build reads is upgraded in place.
        std::fs::write(tmp.path().join(FORMAT_FILE), "wharf-data-format 1\n").unwrap();
        drop(DataDir::open(tmp.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(FORMAT_FILE)).unwrap(),
            "wharf-data-format 2\n"
        );

        std::fs::write(tmp.path().join(FORMAT_FILE), "garbage").unwrap();
        let err = format!("{:#}", DataDir::open(tmp.path()).unwrap_err());
        assert!(err.contains("unreadable format file"), "{err}");
        assert!(err.contains("\"garbage\""), "{err}");
    }
}
