//! The AMQP session state machine against seeded random clients (see `session_ops`): well-formed methods of
//! every class in colliding combinations, wrong content sizes and frames out of place must never panic the
//! broker, a released connection must leave no consumer and no exclusive queue behind, and in conservation runs
//! no confirmed message may go missing unless the client settled it. A CI-sized run
//! of what `fuzz/fuzz_targets/amqp_session.rs` does for as long as it is let.

mod session_ops;

/// Random inputs per run and their length (each byte is one choice; a run stops after its last op). One input
/// can be replayed alone, every frame printed: `SESSION_OPS_SEED=N SESSION_OPS_TRACE=1 cargo test --test
/// session_garbage -- --nocapture`; other seeds, beyond CI's: `SESSION_OPS_FROM=3000 SESSION_OPS_INPUTS=30000`.
const INPUTS: u64 = 3_000;
const INPUT_BYTES: usize = 1_200;

/// xorshift64*: the inputs are the same on every run, so a failure names its seed.
fn bytes_for(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..INPUT_BYTES)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_method_sequences_never_panic_and_release_everything() {
    let (mut ops, mut ended, mut confirmed, mut confirmed_left) = (0, 0, 0, 0);
    let (mut via_exchange, mut dead_lettered) = (0, 0);
    let mut reasons = std::collections::BTreeMap::new();
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let only = env("SESSION_OPS_SEED");
    let from = env("SESSION_OPS_FROM").unwrap_or(0);
    let inputs = env("SESSION_OPS_INPUTS").unwrap_or(INPUTS);
    for seed in from..from.saturating_add(inputs) {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let input = bytes_for(seed);
        let outcome = std::panic::catch_unwind(|| session_ops::run(&input));
        let Ok(outcome) = outcome else {
            panic!("seed {seed} failed (input {input:02x?})");
        };
        ops += outcome.ops;
        ended += outcome.close_reasons.len();
        confirmed += outcome.confirmed;
        confirmed_left += outcome.confirmed_left;
        via_exchange += outcome.via_exchange;
        dead_lettered += outcome.dead_lettered;
        for r in outcome.close_reasons {
            let r: String = r.chars().take(60).collect();
            *reasons.entry(r).or_insert(0usize) += 1;
        }
    }
    eprintln!("{inputs} inputs from seed {from}: {ops} operations, {ended} connections ended before the input did (and were opened again); \
         conservation runs: {confirmed} copies confirmed ({via_exchange} routed through amq.fanout, amq.direct, amq.topic \
         or amq.headers), {dead_lettered} dead-lettered to dlq, {confirmed_left} of all these back in their queues at the end");
    for (r, n) in &reasons {
        eprintln!("{n:6} {r}");
    }
}
