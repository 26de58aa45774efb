//! The allocator survives the capacities a lying length prefix asks for, and honest large buffers still work.

use wharf_alloc::GuardedAlloc;

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// Resident set size of this process in bytes, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

#[test]
fn is_installed_reports_the_global_allocator() {
    assert!(wharf_alloc::is_installed());
}

#[test]
fn a_billion_element_capacity_costs_no_memory() {
    // The DeleteTopics v1 trap: ~1.1 billion 32-byte entries (~35 GB), more than this machine's RAM + swap.
    let before = rss_bytes();
    let mut v: Vec<[u8; 32]> = Vec::with_capacity(1_094_795_585);
    v.push([7; 32]);
    assert_eq!(v[0][31], 7);
    drop(v);
    // The largest compact-array claim (u32::MAX - 1 entries) of a 200-byte struct: ~860 GB of address space.
    let big: Vec<[u8; 200]> = Vec::with_capacity(u32::MAX as usize - 1);
    assert!(big.capacity() >= u32::MAX as usize - 1);
    drop(big);
    let after = rss_bytes();
    assert!(
        after < before + 64 * 1024 * 1024,
        "RSS grew from {before} to {after}"
    );
}

#[test]
fn zeroed_large_buffers_are_zero_and_writable() {
    let mut v = vec![0u8; 100 * 1024 * 1024];
    assert!(v.iter().step_by(4096).all(|&b| b == 0));
    v[100 * 1024 * 1024 - 1] = 1;
    assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 1);
}

#[test]
fn growth_across_the_threshold_keeps_contents() {
    // Small -> large (copy), large -> larger (mremap), large -> small (copy back).
    let mut v: Vec<u32> = Vec::new();
    for i in 0..40_000_000u32 {
        v.push(i);
    }
    assert_eq!(v.len(), 40_000_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10).collect::<Vec<u32>>());
}
