//! A bounded cache of open segment files shared by every log of a node.
//!
//! Thousands of logs with several segments each would exhaust file descriptors if each kept its files open, so
//! every segment file is opened through this cache, which closes the least recently used one past its capacity.
//! Callers hold an `Arc<File>` only for the duration of one read, write or sync, so an evicted file closes as
//! soon as its last user is done; fsync works on the inode, so syncing through a new descriptor still flushes
//! writes made through an old one.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{IoContext, Result};

/// Identifies one segment file for the whole life of the process.
pub type FileId = u64;

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh, process-unique file id.
pub fn next_file_id() -> FileId {
    NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed)
}

/// The cache. Cheap to share through an `Arc`.
#[derive(Debug)]
pub struct FileCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tick: u64,
    files: HashMap<FileId, (Arc<File>, u64)>,
    by_use: BTreeMap<u64, FileId>,
    opens: u64,
}

impl FileCache {
    /// A cache holding at most `capacity` files open (at least 1).
    pub fn new(capacity: usize) -> FileCache {
        FileCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The open file for `id`, opening `path` read-write if it is not cached.
    pub fn get(&self, id: FileId, path: &Path) -> Result<Arc<File>> {
        {
            let mut inner = self.inner.lock();
            let last = inner.tick;
            if let Some((file, used)) = inner.files.get_mut(&id) {
                let file = file.clone();
                // Already the most recently used (a busy log appending): the order is right as it is.
                if *used != last {
                    let tick = last + 1;
                    let old = std::mem::replace(used, tick);
                    inner.tick = tick;
                    inner.by_use.remove(&old);
                    inner.by_use.insert(tick, id);
                }
                return Ok(file);
            }
        }
        // Open outside the lock: open(2) can be slow and other logs must not wait for it.
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .at(path)?,
        );
        self.insert(id, file.clone());
        Ok(file)
    }

    /// Puts a file the caller just created into the cache.
    pub fn insert(&self, id: FileId, file: Arc<File>) {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        inner.opens += 1;
        let tick = inner.tick;
        if let Some((_, old)) = inner.files.insert(id, (file, tick)) {
            inner.by_use.remove(&old);
        }
        inner.by_use.insert(tick, id);
        while inner.files.len() > self.capacity {
            let Some((_, victim)) = inner.by_use.pop_first() else {
                break;
            };
            inner.files.remove(&victim);
        }
    }

    /// Forgets a file (before it is deleted or truncated away).
    pub fn remove(&self, id: FileId) {
        let mut inner = self.inner.lock();
        if let Some((_, used)) = inner.files.remove(&id) {
            inner.by_use.remove(&used);
        }
    }

    /// Number of files currently held open by the cache.
    pub fn open_count(&self) -> usize {
        self.inner.lock().files.len()
    }

    /// How many times a file was opened (or inserted) since start: a measure of cache misses.
    pub fn open_total(&self) -> u64 {
        self.inner.lock().opens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(2);
        let paths: Vec<_> = (0..3).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            std::fs::write(p, b"x").unwrap();
        }
        cache.get(1, &paths[0]).unwrap();
        cache.get(2, &paths[1]).unwrap();
        cache.get(1, &paths[0]).unwrap(); // 1 is now the most recent
        cache.get(3, &paths[2]).unwrap(); // evicts 2
        assert_eq!(cache.open_count(), 2);
        let opens = cache.open_total();
        cache.get(1, &paths[0]).unwrap();
        assert_eq!(cache.open_total(), opens, "1 stayed cached");
        cache.get(2, &paths[1]).unwrap();
        assert_eq!(cache.open_total(), opens + 1, "2 was evicted and reopened");
    }
}
