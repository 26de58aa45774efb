//! AMQP 0-9-1 front end: connection and channel state machines over the `amq-protocol` codec.
//!
//! Filled by the AMQP issue (issue 4). It depends on `wharf-core` and never touches files: durability is the
//! log engine's job, reached only through the core.
