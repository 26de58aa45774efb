//! Any bytes as the choices of an AMQP client driving one connection's state machine (`Session`): methods of
//! every class with colliding names and arguments, content of right and wrong sizes, frames out of place, the
//! deliveries its queues send back. Nothing may panic; the server's output must read as frames; a released
//! connection leaves no consumer and no exclusive queue behind; in conservation runs (the first input byte
//! decides) no confirmed message goes missing unless the client settled it, also across a restart of a vhost
//! with a store, and after a clean restart no settled message comes back. The generator is shared with the CI
//! test `crates/wharf-amqp/tests/session_garbage.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/wharf-amqp/tests/session_ops/mod.rs"]
mod session_ops;

/// The same allocator as the broker.
#[global_allocator]
static ALLOC: wharf_alloc::GuardedAlloc = wharf_alloc::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    session_ops::run(data);
});
