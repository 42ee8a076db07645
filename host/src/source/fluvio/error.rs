//! Why the Fluvio source could not read or commit ([`FluvioError`], shown after `fluvio: `).

/// Why the Fluvio source could not read or commit.
#[derive(Debug, thiserror::Error)]
pub enum FluvioError {
    /// The fluvio client failed. Its errors are opaque (`anyhow`), so the cause is kept boxed;
    /// the message shows its whole chain.
    #[error("{doing}: {}", Chain(&**.source))]
    Client {
        /// What converge asked of the client, e.g. "connecting to the cluster".
        doing: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The cluster's metadata lists no partition by this name (`topic-partition`).
    #[error("reading a partition's offsets: the cluster lists no partition {name}")]
    PartitionUnlisted {
        /// The partition's name in the cluster's metadata.
        name: String,
    },
    /// The topic to read does not exist on the Fluvio cluster.
    #[error("topic {topic} does not exist")]
    TopicMissing {
        /// The configured topic.
        topic: String,
    },
    /// A configured partition is not one of the topic's.
    #[error("topic {topic} has no partition {partition} (it has {available})")]
    NoPartition {
        /// The configured topic.
        topic: String,
        /// The configured partition that does not exist.
        partition: u32,
        /// How many partitions the topic has (numbered from 0).
        available: usize,
    },
    /// Every partition reader ended. Readers only stop on shutdown, so this is an error, not
    /// the end of the input.
    #[error("every partition reader of topic {topic} stopped")]
    ReadersStopped {
        /// The topic read.
        topic: String,
    },
    /// A batch acknowledged a partition this source does not read: the batch did not come
    /// from this source.
    #[error("acknowledged partition {partition} of topic {topic} is not read here")]
    NotReadHere {
        /// The topic read.
        topic: String,
        /// The partition the batch named.
        partition: i32,
    },
    /// A batch acknowledged offsets that were not handed out as one batch of the partition:
    /// acknowledging them could commit past records still in flight, so nothing is.
    #[error(
        "partition {partition} of topic {topic}: offsets {first}..={last} were acknowledged \
         but never handed out as one batch"
    )]
    NotHandedOut {
        /// The topic read.
        topic: String,
        /// The partition acknowledged.
        partition: i32,
        /// The first offset acknowledged.
        first: i64,
        /// The last offset acknowledged.
        last: i64,
    },
    /// A commit's stream did not yield the record to commit in time, even with the largest
    /// fetch; the commit is tried again later.
    #[error(
        "committing offset {offset} of partition {partition}: the record did not arrive \
         within {waited:?}"
    )]
    CommitTimeout {
        /// The partition committed.
        partition: u32,
        /// The offset to commit.
        offset: i64,
        /// How long the commit waited for the record.
        waited: std::time::Duration,
    },
    /// A commit's stream began at another offset than the one to commit, so committing it
    /// would store the wrong position; nothing was committed.
    #[error(
        "committing offset {offset} of partition {partition}: the stream began at offset \
         {found} instead; nothing committed"
    )]
    CommitMismatch {
        /// The partition committed.
        partition: u32,
        /// The offset to commit.
        offset: i64,
        /// The offset the stream began at.
        found: i64,
    },
    /// A commit's stream ended before the record to commit.
    #[error("committing offset {offset} of partition {partition}: the stream ended")]
    CommitStreamEnded {
        /// The partition committed.
        partition: u32,
        /// The offset to commit.
        offset: i64,
    },
}

/// An error and its causes, joined by `: ` (as `anyhow` shows them with `{:#}`).
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::FluvioError;
    use crate::source::SourceError;

    #[test]
    fn a_fluvio_error_shows_its_whole_chain_and_keeps_it_as_its_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("socket error")]
        struct Socket(#[source] std::io::Error);

        let cause = Socket(std::io::Error::other("connection refused"));
        let error = SourceError::from(FluvioError::Client {
            doing: "connecting to the cluster",
            source: cause.into(),
        });
        assert_eq!(
            error.to_string(),
            "fluvio: connecting to the cluster: socket error: connection refused"
        );
        let fluvio = std::error::Error::source(&error).expect("a source");
        let source = fluvio.source().expect("the client's error");
        assert!(source.is::<Socket>());
    }

    #[test]
    fn the_messages_keep_their_fluvio_prefix() {
        let error = SourceError::from(FluvioError::CommitStreamEnded {
            partition: 2,
            offset: 7,
        });
        assert_eq!(
            error.to_string(),
            "fluvio: committing offset 7 of partition 2: the stream ended"
        );
        let error = SourceError::from(FluvioError::TopicMissing {
            topic: "orders".to_owned(),
        });
        assert_eq!(error.to_string(), "fluvio: topic orders does not exist");
    }
}
