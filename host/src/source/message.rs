//! A message as a source delivers it, before decoding.

use std::fmt;

/// Where a message sits in its source; offsets are stored (acknowledged) by position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// A line of a JSON-lines file or stream.
    Line {
        /// The line number, counted from 1.
        line: u64,
    },
    /// An offset in a partition of a topic (Kafka, Fluvio).
    Partition {
        /// The topic.
        topic: String,
        /// The partition of the topic.
        partition: i32,
        /// The record's offset in the partition.
        offset: i64,
    },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line { line } => write!(f, "line {line}"),
            Position::Partition {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}[{partition}]@{offset}"),
        }
    }
}

/// One message: its raw bytes and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where the message sits in its source: what acknowledging it stores, and what a dead
    /// letter points back to.
    pub position: Position,
    /// The message key, if the transport has one (a Kafka record key).
    pub key: Option<Vec<u8>>,
    /// The message body; `None` for a tombstone (a keyed record with no value).
    pub payload: Option<Vec<u8>>,
    /// When the producer created the message (Unix milliseconds), if the transport records it
    /// (Kafka's CreateTime): the start of the event-to-stored latency.
    pub produced_at_ms: Option<i64>,
    /// Set when the message stands for records the source could not read (removed by
    /// retention before they were read): it carries no body and is dead-lettered as `lost`,
    /// so the range is reported rather than skipped in silence.
    pub lost: Option<Lost>,
}

/// Records of a partition that no longer exist, from the message's position to `last_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The last offset of the range (inclusive); the first is the message's position.
    pub last_offset: i64,
    /// Why the range could not be read, for the dead letter.
    pub reason: String,
}
