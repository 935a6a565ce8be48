//! The bounded pool and queue, and exit statuses that never get mixed up.

use std::time::Duration;

use crate::common::*;
use forkpool::pb::execute_response::Event;

#[tokio::test(flavor = "multi_thread")]
async fn queue_positions_move_and_a_full_queue_is_resource_exhausted() {
    let server = TestServer::start(&["--allow-raw-commands", "--workers", "1", "--queue", "2"]);
    let mut client = server.client().await;
    let mut running = OpenCall::open(&mut client, raw(&["sleep", "1000"])).await.expect("open");
    running.started().await;
    let mut first = OpenCall::open(&mut client, job("echo", &["first"])).await.expect("open");
    assert!(matches!(first.next().await, Some(Event::Queued(q)) if q.position == 1));
    let mut second = OpenCall::open(&mut client, job("echo", &["second"])).await.expect("open");
    assert!(matches!(second.next().await, Some(Event::Queued(q)) if q.position == 2));

    let refused = OpenCall::open(&mut client, job("echo", &["third"])).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("queue is full"), "{}", refused.message());

    let status = get_status(&mut client).await;
    assert_eq!(
        (status.workers, status.running, status.queued, status.queue_capacity, status.rejected_total),
        (1, 1, 2, 2, 1)
    );

    // The first leaves the queue: the second moves up.
    drop(first);
    assert!(matches!(second.next().await, Some(Event::Queued(q)) if q.position == 1));
    // The running job is cancelled: the second starts and finishes.
    drop(running);
    let out = second.finish().await;
    assert_eq!(out.stdout_text(), "second\n");
    assert!(wait_until_async(Duration::from_secs(5), || server.children().is_empty()).await);
    let status = settled_status(&mut client).await;
    assert_eq!((status.running, status.queued, status.cancelled_total), (0, 0, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_fast_jobs_each_get_their_own_exit_code() {
    let server = TestServer::start(&["--allow-raw-commands", "--workers", "32", "--queue", "64"]);
    let client = server.client().await;
    let jobs = 2000;
    let mut tasks = tokio::task::JoinSet::new();
    let mut checked = 0;
    for i in 0..jobs {
        let mut client = client.clone();
        tasks.spawn(async move {
            let code: i32 = i % 256;
            let out = run(&mut client, sh(&format!("exit {code}"))).await;
            (code, out)
        });
        while tasks.len() >= 32 {
            let (code, out) = tasks.join_next().await.expect("task").expect("join");
            assert_eq!(out.code(), Some(code), "{out:?}");
            checked += 1;
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (code, out) = joined.expect("join");
        assert_eq!(out.code(), Some(code), "{out:?}");
        checked += 1;
    }
    assert_eq!(checked, jobs);
    let mut client = server.client().await;
    let status = settled_status(&mut client).await;
    assert_eq!((status.started_total, status.finished_total), (jobs as u64, jobs as u64));
    assert_eq!(status.orphans_reaped_total, 0, "no worker may be mistaken for an orphan");
    server.assert_no_zombies();
}
