//! Errors of the log engine. Operating errors (disk, corruption, bad arguments from callers) are values;
//! programmer errors are assertions.

use std::io;
use std::path::PathBuf;

/// Everything the log engine can report to its callers.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A system call on a file of the log failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was made on.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk fail their checks (CRC, header, offsets). The range is refused, never served.
    #[error("corrupt data in {path} at byte {position} (offset {offset}): {reason}")]
    Corrupt {
        /// The segment file that holds the bad bytes.
        path: PathBuf,
        /// Byte position of the bad batch inside that file.
        position: u64,
        /// The log offset the bad batch was expected to hold.
        offset: u64,
        /// Which check failed.
        reason: String,
    },
    /// A read or a seek asked for an offset outside `[log start, log end]`.
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: u64,
        /// The log start offset.
        start: u64,
        /// The log end offset (next offset to be written).
        end: u64,
    },
    /// An append larger than [`crate::LogConfig::max_batch_bytes`].
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Size of the refused batch.
        size: usize,
        /// The configured limit.
        max: u32,
    },
    /// An append that breaks the API's rules (for example zero records).
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// An earlier fsync or write failed; the log refuses writes because the page cache may have dropped data.
    #[error("log {name} refuses writes after an earlier I/O failure: {reason}")]
    Failed {
        /// The log's name.
        name: String,
        /// The first failure.
        reason: String,
    },
    /// The data a caller waited on was removed by `truncate_to` before it became durable.
    #[error("offsets up to {target} were truncated before they became durable")]
    Truncated {
        /// The offset the caller waited for.
        target: u64,
    },
    /// A file written by a format this build does not know.
    #[error(
        "unsupported format version {found} in {path} (this build supports version {supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A log name that is not a safe directory name.
    #[error("invalid log name {0:?}: use 1-255 characters of [A-Za-z0-9._-], not '.' or '..'")]
    InvalidName(String),
    /// The log (or its manager) was closed.
    #[error("log {0} is closed")]
    Closed(String),
}

/// Result alias of the crate.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Attaches the path to an `io::Error`, so every I/O error names its file.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
