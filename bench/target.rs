//! Driving a server that is already running (`--target URL`): the benchmark's rows that need no local floor
//! (start latency, the unary round trip, throughput at 8 and 64 in flight, stdout), and a plain load mode
//! (`--jobs N --concurrency C [--job NAME] -- CMD...`) that prints jobs/s and latency percentiles, like `ghz`.
//! Users size deployments with it; implementations of the contract are compared with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forkpool::cli::{Client, Connection};
use forkpool::pb;
use tokio::sync::Semaphore;

use super::{ms, percentile, run_job, run_to_exit};

/// Runs one job to its end: `Ok` only for an exit with code 0; else what happened (`exit 3`, `signal 9`, the
/// status code).
async fn run_ok(client: &mut Client, start: pb::StartJob) -> Result<(), String> {
    let (_, exited) = run_to_exit(client, start).await.map_err(|e| status_name(&e))?;
    match exited.status {
        Some(pb::exited::Status::Code(0)) => Ok(()),
        Some(pb::exited::Status::Code(code)) => Err(format!("exit {code}")),
        Some(pb::exited::Status::Signal(signal)) => Err(format!("signal {signal}")),
        None => Err("no exit status".into()),
    }
}

fn status_name(error: &anyhow::Error) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) => format!("{:?}", status.code()),
        None => error.to_string(),
    }
}

/// What to run against the target: a catalog job, or a raw command (the server must allow raw commands).
#[derive(Debug, Clone)]
pub(super) struct Work {
    pub(super) job: Option<String>,
    pub(super) command: Vec<String>,
}

impl Work {
    fn start(&self) -> pb::StartJob {
        match &self.job {
            Some(job) => pb::StartJob { job: job.clone(), args: self.command.clone(), ..Default::default() },
            None if self.command.is_empty() => pb::StartJob { command: vec!["/bin/true".into()], ..Default::default() },
            None => pb::StartJob { command: self.command.clone(), ..Default::default() },
        }
    }

    fn describe(&self) -> String {
        match &self.job {
            Some(job) => format!("job `{job}` {}", self.command.join(" ")),
            None if self.command.is_empty() => "`/bin/true`".into(),
            None => format!("`{}`", self.command.join(" ")),
        }
    }
}

/// What a run of many jobs gave.
struct Load {
    ok: usize,
    errors: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
    took: Duration,
}

async fn load(client: &Client, work: &Work, jobs: usize, concurrency: usize) -> Load {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..jobs {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        let (mut client, start) = (client.clone(), work.start());
        tasks.spawn(async move {
            let t = Instant::now();
            let result = run_ok(&mut client, start).await;
            drop(permit);
            (t.elapsed(), result)
        });
    }
    let mut outcome =
        Load { ok: 0, errors: BTreeMap::new(), latencies: Vec::with_capacity(jobs), took: Duration::ZERO };
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((latency, Ok(_))) => {
                outcome.ok += 1;
                outcome.latencies.push(latency);
            }
            Ok((_, Err(e))) => *outcome.errors.entry(e).or_default() += 1,
            Err(e) => *outcome.errors.entry(e.to_string()).or_default() += 1,
        }
    }
    outcome.took = started.elapsed();
    outcome.latencies.sort();
    outcome
}

/// `--jobs N --concurrency C`: one load run, printed.
pub(super) async fn load_mode(
    connection: &Connection,
    work: &Work,
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(jobs > 0, "--jobs must be at least 1");
    let client = forkpool::cli::connect(connection).await?;
    let run = load(&client, work, jobs, concurrency).await;
    let rate = run.ok as f64 / run.took.as_secs_f64();
    println!("target       {}", connection.server);
    println!("work         {}", work.describe());
    println!("jobs         {jobs} ({} ok, {} failed), {concurrency} in flight", run.ok, jobs - run.ok);
    println!("took         {:.3} s", run.took.as_secs_f64());
    println!("rate         {rate:.1} jobs/s");
    if !run.latencies.is_empty() {
        let l = &run.latencies;
        println!(
            "latency      p50 {}  p90 {}  p99 {}  max {}",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.9)),
            ms(percentile(l, 0.99)),
            ms(l[l.len() - 1])
        );
    }
    for (error, count) in &run.errors {
        println!("error        {count} × {error}");
    }
    if run.ok == 0 {
        anyhow::bail!("no job succeeded");
    }
    Ok(())
}

/// `--target URL`: the rows that need no local floor.
pub(super) async fn target_mode(connection: &Connection, work: &Work, quick: bool) -> anyhow::Result<()> {
    let client = forkpool::cli::connect(connection).await?;
    let (latency_runs, throughput_jobs, stdout_bytes) =
        if quick { (20, 100, 16u64 << 20) } else { (200, 2000, 256 << 20) };
    let mut rows: Vec<(String, String)> = Vec::new();
    let sequential = load(&client, work, latency_runs, 1).await;
    let l = &sequential.latencies;
    anyhow::ensure!(!l.is_empty(), "no job succeeded: {:?}", sequential.errors);
    rows.push((
        format!("start-to-exited latency, {}, p50 / p99", work.describe()),
        format!("{} / {}", ms(percentile(l, 0.5)), ms(percentile(l, 0.99))),
    ));
    let mut trips = Vec::with_capacity(latency_runs);
    for _ in 0..latency_runs {
        let t = Instant::now();
        client.clone().get_status(pb::GetStatusRequest {}).await?;
        trips.push(t.elapsed());
    }
    trips.sort();
    rows.push(("unary gRPC round trip (GetStatus), p50".into(), ms(percentile(&trips, 0.5))));
    for in_flight in [8, 64] {
        let run = load(&client, work, throughput_jobs, in_flight).await;
        let failed = throughput_jobs - run.ok;
        rows.push((
            format!("throughput, {in_flight} in flight"),
            format!("{:.0} jobs/s ({failed} failed: {:?})", run.ok as f64 / run.took.as_secs_f64(), run.errors),
        ));
    }
    let flood = pb::StartJob {
        command: vec!["head".into(), "-c".into(), stdout_bytes.to_string(), "/dev/zero".into()],
        ..Default::default()
    };
    let t = Instant::now();
    match run_job(&mut client.clone(), flood).await {
        Ok(bytes) => rows.push((
            format!("stdout, {} MiB streamed to the client", stdout_bytes >> 20),
            format!("{:.0} MB/s", bytes as f64 / t.elapsed().as_secs_f64() / 1e6),
        )),
        Err(e) => rows.push(("stdout".into(), format!("not measured (raw commands refused?): {e}"))),
    }
    println!("target: {}", connection.server);
    println!("| figure | figure measured |");
    println!("|---|---|");
    for (figure, value) in rows {
        println!("| {figure} | {value} |");
    }
    Ok(())
}
