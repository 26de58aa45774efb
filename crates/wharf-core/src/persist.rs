//! Small metadata files written atomically: temp file, fsync, rename, fsync of the directory. A crash leaves
//! either the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{CoreError, Result};

fn meta_err(path: &Path) -> impl FnOnce(std::io::Error) -> CoreError + '_ {
    move |source| CoreError::Meta {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(meta_err(&tmp))?;
    file.write_all(bytes).map_err(meta_err(&tmp))?;
    file.sync_all().map_err(meta_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(meta_err(path))?;
    sync_dir(dir)
}

/// Removes `path` (missing is fine) and makes the removal durable.
pub(crate) fn remove_durably(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(meta_err(path)(e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(meta_err(dir))
}
