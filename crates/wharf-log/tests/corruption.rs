//! Damage on disk is detected and never served: a torn or corrupt tail is truncated, a damaged index is rebuilt,
//! damage in the middle of a sealed segment is refused with an error naming the file and offset. No panics.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{open, payload, read_all, segment_files, small_config};
use wharf_log::{LogConfig, LogError};

type Batches = Vec<(u64, u32, i64, Vec<u8>)>;

/// Writes 100 batches (several segments) and closes the log cleanly.
fn populate(dir: &Path) -> Batches {
    let log = open(dir, small_config());
    let mut expected = Vec::new();
    for n in 0..100u64 {
        let p = payload(n, 150 + (n as usize % 7) * 20);
        let a = log.append(&p, 2, n as i64).unwrap();
        expected.push((a.base_offset, 2, n as i64, p));
    }
    log.close().unwrap();
    expected
}

fn flip_bit(path: &Path, byte: u64, bit: u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, byte).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, byte).unwrap();
}

fn zero_block(path: &Path, at: u64, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let flen = f.metadata().unwrap().len();
    let len = len.min(flen.saturating_sub(at));
    f.write_all_at(&vec![0u8; len as usize], at).unwrap();
}

/// Every batch the log serves must equal what was written at that offset.
fn assert_served_batches_are_intact(served: &Batches, expected: &Batches) {
    for b in served {
        assert!(
            expected.contains(b),
            "served a batch that was never written intact: base {}",
            b.0
        );
    }
}

/// Reads everything readable batch by batch, collecting errors instead of failing.
fn read_tolerant(log: &wharf_log::Log, expected: &Batches) -> (Batches, Vec<LogError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (base, ..) in expected {
        match log.read(*base, 1, None) {
            Ok(batches) => {
                for b in batches {
                    ok.push((
                        b.base_offset,
                        b.record_count,
                        b.max_timestamp,
                        b.payload.to_vec(),
                    ));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

#[test]
fn torn_tail_of_the_active_segment_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let expected = populate(dir.path());
    let last = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    assert!(len > 100);
    // Cut the file in the middle of its last batch, as a crash during the write would.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    // And remove the index checkpoint, as if the crash came before it.
    let _ = std::fs::remove_file(last.with_extension("index"));
    let log = open(dir.path(), small_config());
    let got = read_all(&log, 0);
    assert_eq!(got.as_slice(), &expected[..expected.len() - 1]);
    assert_eq!(log.offsets().log_end, expected.last().unwrap().0);
    assert!(
        std::fs::metadata(&last).unwrap().len() < len - 30,
        "the partial batch was cut off"
    );
}

#[test]
fn flipped_bits_in_the_active_tail_truncate_from_the_damaged_batch() {
    for seed in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        let expected = populate(dir.path());
        let last = segment_files(dir.path()).pop().unwrap();
        let _ = std::fs::remove_file(last.with_extension("index"));
        let len = std::fs::metadata(&last).unwrap().len();
        let at = (seed * 7919) % len;
        flip_bit(&last, at, (seed % 8) as u8);
        let log = open(dir.path(), small_config());
        let got = read_all(&log, 0);
        assert_served_batches_are_intact(&got, &expected);
        assert!(
            got.len() < expected.len(),
            "seed {seed}: the damaged batch must not be served"
        );
        // The prefix before the damaged batch is all there.
        assert_eq!(got.as_slice(), &expected[..got.len()]);
    }
}

#[test]
fn zeroed_block_in_a_sealed_segment_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let expected = populate(dir.path());
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let victim = &files[1];
    zero_block(victim, 1000, 4096);
    let log = open(dir.path(), small_config());
    let (served, errors) = read_tolerant(&log, &expected);
    assert_served_batches_are_intact(&served, &expected);
    assert!(!errors.is_empty());
    for e in &errors {
        match e {
            LogError::Corrupt { path, .. } => assert_eq!(path, victim),
            other => panic!("unexpected error {other}"),
        }
        let text = e.to_string();
        assert!(
            text.contains(&victim.display().to_string()) && text.contains("offset"),
            "{text}"
        );
    }
    // Later segments are still served.
    let tail_start = expected.iter().rev().nth(5).unwrap().0;
    assert_eq!(read_all(&log, tail_start).len(), 6);
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_refused_not_served() {
    for seed in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        let expected = populate(dir.path());
        let files = segment_files(dir.path());
        let victim = &files[0];
        let len = std::fs::metadata(victim).unwrap().len();
        flip_bit(victim, (seed * 104_729 + 13) % len, (seed % 8) as u8);
        let log = open(dir.path(), small_config());
        let (served, errors) = read_tolerant(&log, &expected);
        assert_served_batches_are_intact(&served, &expected);
        assert!(!errors.is_empty(), "seed {seed}: damage went unnoticed");
    }
}

#[test]
fn truncated_sealed_segment_refuses_the_lost_range_and_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let expected = populate(dir.path());
    let files = segment_files(dir.path());
    let victim = &files[1];
    let len = std::fs::metadata(victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let log = open(dir.path(), small_config());
    let (served, errors) = read_tolerant(&log, &expected);
    assert_served_batches_are_intact(&served, &expected);
    assert!(errors.iter().all(|e| matches!(e, LogError::Corrupt { .. })));
    assert!(!errors.is_empty());
    // Segment 0 and the segments after the damaged one are whole.
    assert_eq!(log.read(0, 1, None).unwrap()[0].base_offset, 0);
    let last = expected.last().unwrap();
    assert_eq!(
        log.read(last.0, 1, None).unwrap()[0].payload.to_vec(),
        last.3
    );
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("flip", |p| {
            flip_bit(p, std::fs::metadata(p).unwrap().len() / 2, 3)
        }),
        ("zero", |p| zero_block(p, 0, 4096)),
        ("truncate", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }),
        ("delete", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let expected = populate(dir.path());
        for seg in segment_files(dir.path()) {
            let index = seg.with_extension("index");
            if index.exists() {
                damage(&index);
            }
        }
        let log = open(dir.path(), small_config());
        assert_eq!(read_all(&log, 0), expected, "{what}");
        for (base, _, ts, _) in expected.iter().step_by(9) {
            assert_eq!(
                log.find_offset_by_timestamp(*ts).unwrap().map(|x| x.0),
                Some(*base),
                "{what}"
            );
        }
        // Appends continue after the rebuilt tail.
        let a = log.append(b"next", 1, 0).unwrap();
        assert_eq!(a.base_offset, expected.last().unwrap().0 + 2, "{what}");
    }
}

#[test]
fn random_damage_never_panics_and_never_serves_bad_data() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let expected = populate(dir.path());
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let victim = &files[rng.gen_range(0..files.len())];
        let len = std::fs::metadata(victim).unwrap().len().max(1);
        match rng.gen_range(0..3) {
            0 => flip_bit(victim, rng.gen_range(0..len), rng.gen_range(0..8)),
            1 => zero_block(victim, rng.gen_range(0..len), 4096),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(victim)
                .unwrap()
                .set_len(rng.gen_range(0..len))
                .unwrap(),
        }
        let config = LogConfig { ..small_config() };
        match wharf_log::Log::open(
            dir.path(),
            "t",
            config,
            std::sync::Arc::new(wharf_log::FileCache::new(8)),
        ) {
            Ok(log) => {
                let (served, _errors) = read_tolerant(&log, &expected);
                assert_served_batches_are_intact(&served, &expected);
            }
            Err(e) => panic!("round {round}: open failed on {}: {e}", victim.display()),
        }
    }
}
