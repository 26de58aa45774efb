//! `wharf-log`: the segmented commit log under Kafka partitions and durable AMQP queues.
//!
//! A [`Log`] is a directory of segments. Each segment is a file of *batches*: opaque payloads the caller
//! appends whole, each taking `record_count` dense offsets. The log never interprets payloads; it wraps each in a
//! 32-byte frame (see [`frame`]) with a CRC32C, so torn and rotten bytes are detected, never served.
//!
//! - **Append** returns the batch's base offset; [`Log::append_with`] lets the caller stamp that offset into its
//!   own header first (Kafka batches carry their base offset), and [`Log::append_with_known_crc`] lets a caller
//!   that has verified a CRC32C over the payload's end (Kafka's over bytes 21..) spare the log re-reading those
//!   bytes. Batches land in the page cache; durability is a separate, shared step ([`Log::wait_durable`],
//!   group-committed — see [`group_commit`]).
//! - **Aligned writes**: a log under a [`LogManager`] holds the bytes past the last aligned boundary of its
//!   active segment in memory and sends them in front of the next batch, so every write is a whole aligned
//!   block of up to 64 KiB; held bytes reach the page cache before any sync and within
//!   [`ManagerConfig::tail_flush_interval`] (5 ms) otherwise.
//! - **Large batches**: under a [`LogManager`], the CRC32C of a payload of 256 KiB or more is computed by the
//!   manager's helper thread while the appending thread writes the frame with a zeroed header; the header, which
//!   holds the CRC, is written over it next (see `crc_helper`). A log opened on its own computes every CRC inline.
//! - **Read** returns whole batches from an offset up to a byte budget; payloads are `Bytes` slices of one
//!   buffer per segment read, never copied per batch.
//! - **Find** the first batch whose max timestamp is `>= T` through the per-segment time index.
//! - **Segments** roll by size and age; each has a sparse offset index and a time index, checkpointed with the
//!   position they cover so recovery scans only the unflushed tail.
//! - **Retention** by bytes and age, [`Log::truncate_to`] (replication) and [`Log::advance_log_start`]
//!   (Kafka DeleteRecords).
//! - **Many logs**: a [`LogManager`] shares one bounded [`FileCache`] of descriptors among thousands of logs
//!   and runs interval flushes, checkpoints and retention on one background thread.
//!
//! This crate must not know about protocols, sockets or payload formats.
//!
//! Memory per open log: a few hundred bytes of state, plus the active segment's index (8 bytes per
//! `index_interval_bytes` of data, about 2 KiB per MiB at the default 4 KiB), plus the indexes of sealed
//! segments that have been read since open (the same rate), plus, while it is busy, its held tail (under
//! 128 KiB; released once the log has been idle for `tail_flush_interval`). No data
//! is cached by the log itself: reads go to the page cache.

pub mod config;
mod crc;
mod crc_helper;
pub mod error;
pub mod file_cache;
pub mod frame;
mod fsio;
pub mod group_commit;
pub mod index;
mod log;
mod manager;
pub mod meta;
mod segment;
mod tail;
mod tail_flush;
#[doc(hidden)]
pub mod testing;

pub use config::{Durability, LogConfig, ManagerConfig, BATCH_BYTES_MAX, SEGMENT_BYTES_MAX};
pub use error::{LogError, Result};
pub use file_cache::FileCache;
pub use frame::KnownCrc;
pub use fsio::{sync_dir, write_atomic};
pub use log::{Appended, Log, LogStats, Offsets};
pub use manager::{validate_name, LogManager, LOG_NAME_MAX_LEN};
pub use segment::Batch;
