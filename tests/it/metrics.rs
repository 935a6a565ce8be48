//! Prometheus metrics on `--metrics-listen`, scraped over HTTP after real jobs ran, were cancelled and left
//! orphans.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_jobs_by_reason_latencies_and_orphans() {
    let server = TestServer::start(&["--allow-raw-commands", "--metrics-listen", "127.0.0.1:0"]);
    let addr = server.metrics_addr();
    let mut client = server.client().await;
    assert_eq!(run(&mut client, job("echo", &["x"])).await.code(), Some(0));
    let orphans = run(&mut client, sh("sleep 100 & sleep 100 & sleep 0.2; exit 0")).await;
    assert_eq!(orphans.exited.expect("exited").reaped.len(), 2);
    let mut call = OpenCall::open(&mut client, sh(PAIR)).await.expect("open");
    call.wait_stdout("ready").await;
    drop(call);
    server.assert_no_children();
    let _ = settled_status(&mut client).await;

    let text = scrape(&addr);
    let expect = [
        ("forkpool_jobs_started_total", 3.0),
        ("forkpool_jobs_finished_total{reason=\"exited\"}", 2.0),
        ("forkpool_jobs_finished_total{reason=\"cancelled\"}", 1.0),
        ("forkpool_calls_cancelled_total", 1.0),
        ("forkpool_spawn_seconds_count", 3.0),
        ("forkpool_cancel_to_dead_seconds_count", 1.0),
        // Two from the orphaning job, one from the cancelled tree (its `sleep` outlived the worker briefly).
        ("forkpool_orphans_reaped_total", 3.0),
        ("forkpool_jobs_running", 0.0),
        ("forkpool_calls_queued", 0.0),
        ("forkpool_cgroups_populated_after_end_total", 0.0),
    ];
    for (series, wanted) in expect {
        assert_eq!(metric(&text, series), Some(wanted), "{series} in:\n{text}");
    }
    let cancel = metric(&text, "forkpool_cancel_to_dead_seconds_sum").expect("sum");
    assert!(cancel > 0.0 && cancel < 5.0, "cancel to dead took {cancel} s");
}
