//! Reading: gaps read again, streams reopened, evicted and unreadable ranges handed out as
//! lost, and a cluster or topic that is not there.

use super::*;

#[tokio::test]
async fn a_gap_is_read_again_and_every_offset_handed_out_once_in_order() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 300));
        c.logs.insert(1, (0, 300));
        // The client's cut batch: 120..=149 of partition 1 are jumped over, once.
        c.skip_next_open.insert(1, vec![(120, 149)]);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 600).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (0..300).collect::<Vec<_>>());
    assert_eq!(
        per[&1],
        (0..300).collect::<Vec<_>>(),
        "the skipped range is read again, nothing twice"
    );
    assert!(
        !fake.opens_at(1, 120).is_empty(),
        "partition 1 reopened at its first missing offset: {:?}",
        fake.with(|c| c.opens.clone())
    );
    assert!(all.iter().all(|m| m.lost.is_none()));
    assert_eq!(
        committed(&fake, &[(0, 299), (1, 299)]).await,
        HashMap::from([(0, 299), (1, 299)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_stream_that_ends_or_fails_to_open_is_reopened_at_its_partitions_own_position() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
        c.logs.insert(1, (0, 100));
        c.end_next_open_after.insert(0, 37);
        c.end_next_open_after.insert(1, 61);
        c.failing_opens.insert(1, 2);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 200).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (0..100).collect::<Vec<_>>());
    assert_eq!(per[&1], (0..100).collect::<Vec<_>>());
    assert!(
        !fake.opens_at(0, 37).is_empty() && !fake.opens_at(1, 61).is_empty(),
        "each partition reopened where it stopped: {:?}",
        fake.with(|c| c.opens.clone())
    );
    source.close().await;
}

#[tokio::test]
async fn records_removed_by_retention_are_handed_out_as_one_lost_range() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (500, 600));
        c.committed.insert(0, 99);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 101).await;
    let lost = all[0]
        .lost
        .as_ref()
        .expect("the first message is the lost range");
    assert_eq!(offsets(&all[..1]), [(0, 100)]);
    assert_eq!(lost.last_offset, 499);
    assert!(lost.reason.contains("100..=499"), "{}", lost.reason);
    assert!(lost.reason.contains("retention"), "{}", lost.reason);
    assert_eq!(
        offsets(&all[1..]),
        (500..600).map(|o| (0, o)).collect::<Vec<_>>()
    );
    assert_eq!(
        committed(&fake, &[(0, 599)]).await,
        HashMap::from([(0, 599)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_gap_on_every_reread_is_reported_as_lost_not_skipped() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 30));
        c.skip_always.insert(0, (10, 12));
    });
    let mut source = source_with(&fake, small_fetch(256)).await;
    let all = tokio::time::timeout(Duration::from_secs(60), read_all(&mut source, 28))
        .await
        .expect("the partition does not stall");
    let lost: Vec<_> = all.iter().filter(|m| m.lost.is_some()).collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(offsets(&[lost[0].clone()]), [(0, 10)]);
    assert_eq!(lost[0].lost.as_ref().map(|l| l.last_offset), Some(12));
    assert_eq!(
        fake.opens_at(0, 10),
        [2, 4, 8, 16, 32, 32, 32, 32, 32, 32].map(|mib| mib * MIB),
        "every re-read doubles the fetch, up to the cluster's cap"
    );
    assert_eq!(committed(&fake, &[(0, 29)]).await, HashMap::from([(0, 29)]));
    source.close().await;
}

#[tokio::test]
async fn an_unreachable_cluster_at_start_is_waited_for() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 10));
        c.failing_setup = 3;
    });
    let mut source = source(&fake, 64).await;
    let all = read_all(&mut source, 10).await;
    assert_eq!(per_partition(&all)[&0], (0..10).collect::<Vec<_>>());
    source.close().await;
}

#[tokio::test]
async fn a_topic_that_does_not_exist_is_an_error_at_once() {
    let fake = Fake::default();
    let another = fake.clone();
    let error = FluvioSource::start(
        fake.clone(),
        move || another.clone(),
        &config(8),
        Arc::new(Metrics::new()),
    )
    .await
    .expect_err("no such topic");
    assert!(
        error.to_string().contains("topic orders does not exist"),
        "{error}"
    );
}

#[tokio::test]
async fn wedge_a_cut_at_the_end_of_a_quiet_partition_is_read_again() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
        c.logs.insert(1, (0, 100));
        // The client's cut batch at the very end of partition 0: no later record comes to
        // show the gap.
        c.skip_next_open.insert(0, vec![(90, 99)]);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 200).await;
    let per = per_partition(&all);
    assert_eq!(
        per[&0],
        (0..100).collect::<Vec<_>>(),
        "the tail is read again"
    );
    assert_eq!(per[&1], (0..100).collect::<Vec<_>>());
    assert!(
        !fake.opens_at(0, 90).is_empty(),
        "partition 0 reopened at its first missing offset: {:?}",
        fake.with(|c| c.opens.clone())
    );
    assert!(lost(&all).is_empty());
    assert_eq!(
        committed(&fake, &[(0, 99), (1, 99)]).await,
        HashMap::from([(0, 99), (1, 99)])
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_a_tail_skipped_by_every_reread_is_dead_lettered_as_lost_with_its_offsets() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 30));
        c.skip_always.insert(0, (25, 29));
    });
    let mut source = source_with(&fake, small_fetch(256)).await;
    let all = read_all(&mut source, 26).await;
    assert_eq!(
        offsets(&all),
        (0..26).map(|o| (0, o)).collect::<Vec<_>>(),
        "0..=24, then the lost range at 25"
    );
    let lost = lost(&all);
    assert_eq!(lost.len(), 1, "{lost:?}");
    let (first, last, reason) = &lost[0];
    assert_eq!((*first, *last), (25, 29));
    assert!(
        reason.contains("25..=29"),
        "the letter names the offsets: {reason}"
    );
    assert!(reason.contains("re-reads"), "{reason}");
    assert_eq!(
        fake.opens_at(0, 25),
        [2, 4, 8, 16, 32, 32, 32, 32, 32, 32].map(|mib| mib * MIB),
        "every re-read doubles the fetch, up to the cluster's cap"
    );
    assert_eq!(committed(&fake, &[(0, 29)]).await, HashMap::from([(0, 29)]));
    source.close().await;
}

#[tokio::test]
async fn wedge_a_first_record_past_the_log_start_of_a_never_committed_partition_is_a_gap() {
    let fake = Fake::default();
    fake.with(|c| {
        // Never committed; retention left partition 0 starting at 40.
        c.logs.insert(0, (40, 100));
        c.logs.insert(1, (0, 50));
        // The client's cut batch at the very start of each partition.
        c.skip_next_open.insert(0, vec![(40, 44)]);
        c.skip_next_open.insert(1, vec![(0, 2)]);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 60 + 50).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (40..100).collect::<Vec<_>>(), "from the log start");
    assert_eq!(per[&1], (0..50).collect::<Vec<_>>(), "from the log start");
    assert!(lost(&all).is_empty());
    assert_eq!(
        fake.opens_at(0, 40).len(),
        2,
        "opened, then re-read at the start"
    );
    assert_eq!(
        fake.opens_at(1, 0).len(),
        2,
        "opened, then re-read at the start"
    );
    assert_eq!(
        committed(&fake, &[(0, 99), (1, 49)]).await,
        HashMap::from([(0, 99), (1, 49)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_never_committed_partition_whose_start_moved_is_read_from_its_first_record_left() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (50, 100));
        // The cluster still reports the start from before retention ran.
        c.reported_start.insert(0, 20);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 50).await;
    assert_eq!(per_partition(&all)[&0], (50..100).collect::<Vec<_>>());
    assert!(
        lost(&all).is_empty(),
        "records removed before a never-committed partition was first read are not lost"
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_a_gap_is_read_again_with_a_growing_fetch_before_it_is_called_lost() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 60));
        // A batch no fetch below 8 MiB returns whole.
        c.skip_below_fetch.insert(0, ((20, 29), 8 * MIB));
    });
    let mut source = source_with(&fake, small_fetch(256)).await;
    let all = read_all(&mut source, 60).await;
    assert_eq!(per_partition(&all)[&0], (0..60).collect::<Vec<_>>());
    assert!(lost(&all).is_empty(), "{:?}", lost(&all));
    assert_eq!(
        fake.opens_at(0, 20),
        [2 * MIB, 4 * MIB, 8 * MIB],
        "each re-read doubles the fetch until the batch comes whole"
    );
    source.close().await;
}
