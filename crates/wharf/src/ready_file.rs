//! The `--ready-file`: how tools and tests learn that the broker is up and where its listeners are.
//!
//! Polling a port is racy and cannot tell which port 0 became, so the broker writes, once every enabled
//! listener is bound and serving, a JSON object mapping each open listener to its bound address, e.g.
//! `{"http":"127.0.0.1:41236"}`. A listener that is off or not built yet has no key. The file is written
//! atomically (tmp file, fsync, rename), so a reader that sees it sees it whole.
//!
//! A file left by an earlier run is removed at start-up (after the data directory is locked, so a second
//! broker refused at the lock never removes the first one's file), and the file is removed again on a
//! clean shutdown: while the file exists, it describes a running broker.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::data_dir::write_atomically;

/// The bound addresses of the open listeners, keyed by protocol (`amqp`, `kafka`, `http`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BoundListeners(BTreeMap<&'static str, SocketAddr>);

impl BoundListeners {
    pub fn insert(&mut self, protocol: &'static str, addr: SocketAddr) {
        self.0.insert(protocol, addr);
    }

    /// The ready-file contents.
    pub fn to_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(protocol, addr)| (protocol.to_string(), addr.to_string().into()))
            .collect();
        serde_json::Value::Object(object).to_string()
    }
}

/// Writes the ready file atomically.
pub fn write(path: &Path, listeners: &BoundListeners) -> anyhow::Result<()> {
    write_atomically(path, listeners.to_json().as_bytes())
        .with_context(|| format!("cannot write ready file {}", path.display()))
}

/// Removes the ready file (and a leftover `.tmp`) if present.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    for file in [path, Path::new(&tmp)] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot remove ready file {}", file.display()))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_one_key_per_open_listener() {
        let mut listeners = BoundListeners::default();
        assert_eq!(listeners.to_json(), "{}");
        listeners.insert("http", "127.0.0.1:41236".parse().unwrap());
        listeners.insert("amqp", "[::1]:5672".parse().unwrap());
        assert_eq!(
            listeners.to_json(),
            r#"{"amqp":"[::1]:5672","http":"127.0.0.1:41236"}"#
        );
    }

    #[test]
    fn write_then_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ready.json");
        let mut listeners = BoundListeners::default();
        listeners.insert("http", "127.0.0.1:1".parse().unwrap());
        write(&path, &listeners).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"http":"127.0.0.1:1"}"#
        );
        assert!(!tmp.path().join("ready.json.tmp").exists());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
