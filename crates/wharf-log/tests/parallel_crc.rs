//! Large payloads appended under a manager have their CRC32C computed by the manager's helper thread while they
//! are written, the header (which holds the CRC) going out last. These tests check that every frame written
//! that way carries the right CRC (checked here independently of the crate, over the raw segment files, and by
//! recovery and reads), that a damaged large frame is refused, and that the state between the two writes (body
//! written, header not) is never served after a crash.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{copy_dir, open, payload, read_all, segment_files};
use wharf_log::frame::FRAME_HEADER_LEN;
use wharf_log::{Durability, LogConfig, LogManager, ManagerConfig};

type Batches = Vec<(u64, u32, i64, Vec<u8>)>;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn manager(dir: &Path, tail_flush_interval: Duration) -> LogManager {
    LogManager::open(
        dir,
        ManagerConfig {
            tail_flush_interval,
            ..ManagerConfig::default()
        },
    )
    .unwrap()
}

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        segment_bytes: 64 << 20,
        index_interval_bytes: 4096,
        retention_ms: None,
        max_batch_bytes: 8 << 20,
        ..LogConfig::default()
    }
}

/// Payload lengths around the helper's threshold (256 KiB), its pieces (128 KiB) and the 64 KiB write
/// boundaries, with small batches in between so frames start at many positions. Frames 0 and 8 are damaged in
/// [`a_damaged_byte_in_a_large_frame_is_refused`].
const LENGTHS: [usize; 14] = [
    MIB,
    100,
    256 * KIB,
    256 * KIB + 1,
    256 * KIB - 1,
    MIB - 32,
    5000,
    300_000,
    3 * MIB + 5,
    128 * KIB,
    2 * MIB,
    17,
    640 * KIB + 3,
    MIB + 4096,
];

/// Every frame of every segment file in `dir`, checked with a CRC32C computed here over header bytes 4..32
/// and the payload: returns the number of frames, panics on the first mismatch.
fn check_frames_on_disk(dir: &Path) -> usize {
    let mut frames = 0;
    for path in segment_files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        let mut pos = 0usize;
        while pos < bytes.len() {
            let h = &bytes[pos..pos + FRAME_HEADER_LEN];
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let stored = u32::from_le_bytes(h[0..4].try_into().unwrap());
            let payload = &bytes[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len];
            let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..]), payload);
            assert_eq!(
                crc,
                stored,
                "{}: frame at {pos} ({len} bytes) has a wrong CRC",
                path.display()
            );
            pos += FRAME_HEADER_LEN + len;
            frames += 1;
        }
    }
    frames
}

/// Appends [`LENGTHS`] through `append` and `append_with` alternately; returns what was appended.
fn append_lengths(log: &wharf_log::Log, first: u64) -> Batches {
    let mut out = Vec::new();
    for (i, &len) in LENGTHS.iter().enumerate() {
        let n = first + i as u64;
        let mut p = payload(n, len);
        let a = if i % 2 == 0 {
            log.append(&p, 3, n as i64).unwrap()
        } else {
            log.append_with(&mut p, 3, n as i64, |base, p| {
                p[..8].copy_from_slice(&base.to_le_bytes())
            })
            .unwrap()
        };
        out.push((a.base_offset, 3, n as i64, p));
    }
    out
}

/// Appends more 1 MiB batches until the helper has computed some piece (it nearly always has already): the
/// tests below must exercise the helper's pieces, not only the appender's.
fn until_the_helper_helped(m: &LogManager, log: &wharf_log::Log, expected: &mut Batches) {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        return; // one CPU: the manager starts no helper
    }
    let mut n = 1000;
    while m.parallel_crc_pieces() == 0 && n < 1100 {
        let p = payload(n, MIB);
        let a = log.append(&p, 1, n as i64).unwrap();
        expected.push((a.base_offset, 1, n as i64, p));
        n += 1;
    }
    assert!(m.parallel_crc_pieces() > 0, "the helper computed no piece");
}

fn remove_indexes(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index") {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[test]
fn large_batches_carry_the_right_crc_and_read_back_intact() {
    for (tail_flush_interval, durability) in [
        (Duration::from_millis(5), Durability::Os),
        (Duration::from_secs(3600), Durability::Os),
        (Duration::ZERO, Durability::Os),
        (Duration::from_millis(5), Durability::Always),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), tail_flush_interval);
        let log = m.open_log("big", config(durability)).unwrap();
        let mut expected = append_lengths(&log, 0);
        until_the_helper_helped(&m, &log, &mut expected);
        // Read back while the log is open (every read checks the CRC), held tail included.
        assert_eq!(read_all(&log, 0), expected, "{tail_flush_interval:?}");
        let log_dir = log.dir().to_path_buf();
        drop(log);
        m.close().unwrap();
        drop(m);
        // The files, checked frame by frame with a CRC computed here.
        assert_eq!(check_frames_on_disk(&log_dir), expected.len());
        // Recovery and reads without the indexes: every frame is scanned and checked again.
        remove_indexes(&log_dir);
        let reopened = open(&log_dir, config(durability));
        let last = expected.last().unwrap();
        assert_eq!(reopened.offsets().log_end, last.0 + u64::from(last.1));
        assert_eq!(read_all(&reopened, 0), expected);
    }
}

#[test]
fn a_threshold_of_zero_sends_every_payload_through_the_helper() {
    // Small payloads and the fallback for frames without a whole block past their header take the same path.
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_millis(5));
    m.set_parallel_crc_min_bytes(0);
    let log = m.open_log("all", config(Durability::Os)).unwrap();
    let mut expected = Vec::new();
    for n in 0..300u64 {
        let len = [0, 1, 31, 4096, 60_000, 70_000, 131_072, 200_000][n as usize % 8] + n as usize;
        let p = payload(n, len);
        let a = log.append(&p, 1, n as i64).unwrap();
        expected.push((a.base_offset, 1, n as i64, p));
    }
    assert_eq!(read_all(&log, 0), expected);
    let log_dir = log.dir().to_path_buf();
    drop(log);
    m.close().unwrap();
    assert_eq!(check_frames_on_disk(&log_dir), expected.len());
}

/// Position and payload length of every frame in the first segment of `dir`.
fn frame_positions(dir: &Path) -> Vec<(u64, usize)> {
    let path = &segment_files(dir)[0];
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        out.push((pos as u64, len));
        pos += FRAME_HEADER_LEN + len;
    }
    out
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn a_damaged_byte_in_a_large_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_millis(5));
    let log = m.open_log("big", config(Durability::Os)).unwrap();
    let mut expected = append_lengths(&log, 0);
    until_the_helper_helped(&m, &log, &mut expected);
    let log_dir = log.dir().to_path_buf();
    drop(log);
    m.close().unwrap();
    drop(m);
    let frames = frame_positions(&log_dir);
    assert!(
        frames.len() > 8,
        "the first segment holds the frames damaged below"
    );
    // Frame 0 (1 MiB), damaged in the part written first (past its first 64 KiB block), in the header's block,
    // and in the CRC itself; frame 8 (3 MiB + 5) near its end.
    for (frame, delta) in [
        (0usize, 700_000u64),
        (0, FRAME_HEADER_LEN as u64 + 10),
        (0, 1),
        (8, FRAME_HEADER_LEN as u64 + 3 * MIB as u64),
    ] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&log_dir, copy.path());
        let (pos, _) = frames[frame];
        flip_byte(&segment_files(copy.path())[0], pos + delta);
        // The index covers the whole segment (clean close): reads refuse the damaged batch.
        let log = open(copy.path(), config(Durability::Os));
        let (base, ..) = expected[frame];
        let err = log.read(base, 1, None).unwrap_err();
        assert!(
            matches!(err, wharf_log::LogError::Corrupt { .. }),
            "frame {frame} +{delta}: {err}"
        );
        // Batches before it are intact.
        for b in &expected[..frame] {
            let got = log.read(b.0, 1, None).unwrap();
            assert_eq!(got[0].payload.as_ref(), b.3.as_slice());
        }
        drop(log);
        // Recovery without the index scans the segment and cuts it at the damaged batch.
        remove_indexes(copy.path());
        let log = open(copy.path(), config(Durability::Os));
        assert_eq!(log.offsets().log_end, base, "frame {frame} +{delta}");
        assert_eq!(read_all(&log, 0), expected[..frame].to_vec());
    }
}

#[test]
fn a_crash_between_the_payload_and_the_header_write_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(3600));
    let log = m.open_log("big", config(Durability::Os)).unwrap();
    let mut expected = append_lengths(&log, 0);
    let frame_at = log.stats().size_bytes;
    let p = payload(500, MIB + 12_345);
    let a = log.append(&p, 1, 0).unwrap();
    expected.push((a.base_offset, 1, 0, p));
    // A crash after the first write of the last frame leaves the frame with a zeroed header (the placeholder
    // the header is written over once its CRC is known): emulate it on a copy of the files.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(log.dir(), copy.path());
    let seg = segment_files(copy.path()).last().unwrap().clone();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    assert!(
        f.metadata().unwrap().len() > frame_at + MIB as u64 - 64 * 1024,
        "the payload was written up to its last boundary"
    );
    f.write_all_at(&[0u8; FRAME_HEADER_LEN], frame_at).unwrap();
    drop(f);
    let reopened = open(copy.path(), config(Durability::Os));
    assert_eq!(reopened.offsets().log_end, a.base_offset);
    // The batches before it are all there and intact (the frame's write sent the held bytes in front of it).
    assert_eq!(read_all(&reopened, 0), expected[..expected.len() - 1]);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        frame_at,
        "the torn frame is cut off"
    );
    assert_eq!(read_all(&log, 0), expected);
}
