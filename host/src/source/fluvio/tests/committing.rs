//! Acknowledging and committing: exactly the acknowledged offsets, per partition, and commits
//! whose stream misbehaves.

use super::*;

#[tokio::test]
async fn nothing_is_committed_before_its_batch_is_acknowledged() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
    });
    let mut source = source(&fake, 16).await;
    let first = source.next_batch(10).await.expect("batch");
    assert_eq!(offsets(&first), (0..10).map(|o| (0, o)).collect::<Vec<_>>());
    let second = source.next_batch(10).await.expect("batch");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        fake.with(|c| c.commits.is_empty()),
        "read ahead but nothing acknowledged: nothing committed"
    );
    source.ack(&second).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        fake.with(|c| c.commits.is_empty()),
        "the later batch is acknowledged, the earlier one is not: still nothing committed"
    );
    source.ack(&first).await.expect("ack");
    assert_eq!(committed(&fake, &[(0, 19)]).await, HashMap::from([(0, 19)]));
    assert!(
        fake.with(|c| c.commits.iter().all(|(_, offset)| *offset <= 19)),
        "never more than acknowledged: {:?}",
        fake.with(|c| c.commits.clone())
    );
    source.close().await;
}

#[tokio::test]
async fn partitions_acknowledged_out_of_step_are_committed_each_to_its_own_offset() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 40));
        c.logs.insert(1, (0, 40));
        c.logs.insert(2, (0, 40));
    });
    let mut source = source(&fake, 128).await;
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < 120 {
        let batch = source.next_batch(7).await.expect("batch");
        seen += batch.len();
        batches.push(batch);
    }
    // Acknowledge every batch but the second, in reverse order.
    for batch in batches.iter().enumerate().rev().filter(|(i, _)| *i != 1) {
        source.ack(batch.1).await.expect("ack");
    }
    let held: HashMap<i32, i64> = runs(&batches[1])
        .into_iter()
        .map(|(partition, first, _)| (partition, first))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (partition, offset) in fake.with(|c| c.committed.clone()) {
        if let Some(first_held) = held.get(&(partition as i32)) {
            assert!(
                offset < *first_held,
                "partition {partition} committed {offset}, past its unacknowledged {first_held}"
            );
        } else {
            assert_eq!(offset, 39, "partition {partition} has nothing held back");
        }
    }
    source.ack(&batches[1]).await.expect("ack");
    assert_eq!(
        committed(&fake, &[(0, 39), (1, 39), (2, 39)]).await,
        HashMap::from([(0, 39), (1, 39), (2, 39)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_restart_resumes_each_partition_after_its_own_committed_offset() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 50));
        c.logs.insert(1, (0, 50));
        c.committed.insert(0, 29);
        c.committed.insert(1, 9);
    });
    let mut source = source(&fake, 64).await;
    let all = read_all(&mut source, 20 + 40).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (30..50).collect::<Vec<_>>());
    assert_eq!(per[&1], (10..50).collect::<Vec<_>>());
    assert!(!fake.opens_at(0, 30).is_empty() && !fake.opens_at(1, 10).is_empty());
    source.close().await;
}

#[tokio::test]
async fn close_commits_the_last_acknowledged_offset() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 1000));
    });
    let mut source = source(&fake, 64).await;
    let batch = source.next_batch(50).await.expect("batch");
    source.ack(&batch).await.expect("ack");
    source.close().await;
    assert_eq!(fake.with(|c| c.committed.get(&0).copied()), Some(49));
}

#[tokio::test]
async fn an_acknowledgement_of_a_batch_not_handed_out_here_is_refused() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 10));
    });
    let mut source = source(&fake, 16).await;
    let message = |partition: i32, offset: i64| Message {
        position: Position::Partition {
            topic: "orders".to_owned(),
            partition,
            offset,
        },
        key: None,
        payload: None,
        produced_at_ms: None,
        lost: None,
    };
    let error = source
        .ack(&[message(7, 0)])
        .await
        .expect_err("partition 7 is not read");
    assert!(
        matches!(
            error,
            SourceError::Fluvio(FluvioError::NotReadHere { partition: 7, .. })
        ),
        "{error}"
    );
    let error = source
        .ack(&[message(0, 3)])
        .await
        .expect_err("offset 3 was never handed out");
    assert!(
        matches!(
            error,
            SourceError::Fluvio(FluvioError::NotHandedOut {
                partition: 0,
                first: 3,
                last: 3,
                ..
            })
        ),
        "{error}"
    );
    assert!(fake.with(|c| c.commits.is_empty()), "nothing committed");
    source.close().await;
}

#[tokio::test]
async fn wedge_a_commit_stream_beginning_past_its_offset_is_asked_again_with_a_larger_fetch() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 40));
        // A commit stream with less than 4 MiB of fetch begins past its offset.
        c.commit_mismatch_below.insert(0, 4 * MIB);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 40).await;
    assert_eq!(per_partition(&all)[&0], (0..40).collect::<Vec<_>>());
    assert_eq!(
        committed(&fake, &[(0, 39)]).await,
        HashMap::from([(0, 39)]),
        "committed despite the mismatches; fetch sizes of the commits asked for: {:?}",
        fake.commit_reads_at(0, 39)
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(
        fake.commit_reads_at(0, 39),
        [
            COMMIT_FETCH_BYTES,
            4 * COMMIT_FETCH_BYTES,
            16 * COMMIT_FETCH_BYTES
        ],
        "the commit fetch grows fourfold until the record comes first"
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_an_offset_evicted_during_its_commit_is_passed_over_not_retried() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
        // Retention removes everything below 80 while the first commit is under way.
        c.evict_on_commit.insert(0, 80);
    });
    let mut source = source(&fake, 256).await;
    let first = source.next_batch(50).await.expect("batch");
    let (_, last) = *offsets(&first).last().expect("a record");
    assert!(last < 80);
    source.ack(&first).await.expect("ack");
    for _ in 0..500 {
        if !fake.commit_reads_at(0, last).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Room for a committer that retries the evicted offset to show it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        fake.commit_reads_at(0, last).len(),
        1,
        "offset {last} is gone: asked once, not again and again: {:?}",
        fake.with(|c| c.commit_reads.clone())
    );
    // The rest was read before retention ran; once it is acknowledged, the partition is
    // committed past the removed range.
    let rest = read_all(&mut source, 100 - first.len()).await;
    assert!(lost(&rest).is_empty());
    assert_eq!(committed(&fake, &[(0, 99)]).await, HashMap::from([(0, 99)]));
    assert_eq!(fake.commit_reads_at(0, last).len(), 1);
    source.close().await;
}
