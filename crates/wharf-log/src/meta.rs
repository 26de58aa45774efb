//! The small per-log metadata file `log.meta`: what cannot be derived from the segments themselves.
//!
//! Today that is only the log start offset (moved by Kafka DeleteRecords), which may lie inside the first
//! segment. Text, so an operator can read it; the last line is a CRC32C of the lines before it.
//!
//! ```text
//! wharf-log-meta 1
//! log_start_offset 1234
//! crc32c 0a1b2c3d
//! ```

use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError, Result};
use crate::fsio::write_atomic;

/// Version of the meta file format.
pub const META_VERSION: u32 = 1;
const META_FILE: &str = "log.meta";

/// The contents of `log.meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogMeta {
    /// First offset readers may see.
    pub log_start_offset: u64,
}

/// Path of the meta file of the log in `dir`.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

impl LogMeta {
    fn body(&self) -> String {
        format!(
            "wharf-log-meta {META_VERSION}\nlog_start_offset {}\n",
            self.log_start_offset
        )
    }

    /// Writes the file atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let body = self.body();
        let text = format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()));
        write_atomic(&meta_path(dir), text.as_bytes())
    }

    /// Reads the file. `Ok(None)` if it does not exist or is damaged (the caller falls back to the segments and
    /// logs it); an unknown version is an error, never guessed at.
    pub fn load(dir: &Path) -> Result<Option<LogMeta>> {
        let path = meta_path(dir);
        let text = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        let Ok(text) = String::from_utf8(text) else {
            tracing::warn!(path = %path.display(), "log meta file is not UTF-8; ignoring it");
            return Ok(None);
        };
        let mut lines = text.lines();
        let version = lines
            .next()
            .and_then(|l| l.strip_prefix("wharf-log-meta "))
            .and_then(|v| v.trim().parse::<u32>().ok());
        match version {
            Some(META_VERSION) => {}
            Some(found) => {
                return Err(LogError::UnsupportedVersion {
                    path,
                    found,
                    supported: META_VERSION,
                })
            }
            None => {
                tracing::warn!(path = %path.display(), "log meta file has no version line; ignoring it");
                return Ok(None);
            }
        }
        let start = lines
            .next()
            .and_then(|l| l.strip_prefix("log_start_offset "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let crc = lines
            .next()
            .and_then(|l| l.strip_prefix("crc32c "))
            .and_then(|v| u32::from_str_radix(v.trim(), 16).ok());
        match (start, crc) {
            (Some(log_start_offset), Some(crc)) => {
                let meta = LogMeta { log_start_offset };
                if crc32c::crc32c(meta.body().as_bytes()) == crc {
                    return Ok(Some(meta));
                }
                tracing::warn!(path = %path.display(), "log meta file fails its CRC; ignoring it");
                Ok(None)
            }
            _ => {
                tracing::warn!(path = %path.display(), "log meta file is malformed; ignoring it");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LogMeta::load(dir.path()).unwrap(), None);
        LogMeta {
            log_start_offset: 77,
        }
        .store(dir.path())
        .unwrap();
        assert_eq!(
            LogMeta::load(dir.path()).unwrap(),
            Some(LogMeta {
                log_start_offset: 77
            })
        );
        let p = meta_path(dir.path());
        let t = std::fs::read_to_string(&p).unwrap().replace("77", "78");
        std::fs::write(&p, t).unwrap();
        assert_eq!(LogMeta::load(dir.path()).unwrap(), None);
        std::fs::write(&p, "wharf-log-meta 9\n").unwrap();
        assert!(matches!(
            LogMeta::load(dir.path()),
            Err(LogError::UnsupportedVersion { found: 9, .. })
        ));
    }
}
