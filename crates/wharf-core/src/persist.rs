//! Small metadata files written atomically, through the log engine's own helpers (temp file, fsync, rename,
//! fsync of the directory): a crash leaves either the old file or the new one, never a mix.

use std::path::Path;

use crate::error::{CoreError, Result};

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(wharf_log::write_atomic(path, bytes)?)
}

/// Removes `path` (missing is fine) and makes the removal durable.
pub(crate) fn remove_durably(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CoreError::Meta {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    Ok(wharf_log::sync_dir(
        path.parent().unwrap_or(Path::new(".")),
    )?)
}
