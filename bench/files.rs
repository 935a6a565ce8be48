//! Files in and out: MB/s of one large input file (uploaded, written into the job's directory, the job run)
//! and one large output file (from its first chunk to `exited`), against `cat FILE > /dev/null` of a file of
//! the same size in the page cache, measured in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use forkpool::pb::{self, execute_request::Msg, execute_response::Event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::BenchServer;

/// Bytes per `input` message.
const CHUNK: usize = 1 << 20;

/// A config that lets a job take and return files of `bytes`.
pub(super) fn config(bytes: u64) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("forkpool-bench-files-{}.toml", std::process::id()));
    let cap = bytes * 2;
    let text = format!("[limits]\ninput_bytes = {cap}\noutput_file_bytes = {cap}\noutput_files_bytes = {cap}\n");
    std::fs::write(&path, text).context("cannot write the benchmark's config")?;
    Ok(path)
}

/// Uploads `bytes` as one input file to a job that only checks its size; MB/s from the call's start to
/// `exited`.
pub(super) async fn input_rate(server: &BenchServer, bytes: u64) -> anyhow::Result<f64> {
    let mut client = server.client().await?;
    let start = pb::StartJob {
        command: vec!["sh".into(), "-c".into(), format!("test $(stat -c %s in) = {bytes}")],
        inputs: vec![pb::InputFile { path: "in".into(), size: bytes, mode: 0, content: Vec::new() }],
        ..Default::default()
    };
    let (requests, rx) = mpsc::channel(4);
    let t = Instant::now();
    requests.send(pb::ExecuteRequest { msg: Some(Msg::Start(start)) }).await?;
    let sender = tokio::spawn(async move {
        let piece = vec![b'x'; CHUNK];
        let mut sent = 0u64;
        while sent < bytes {
            let n = CHUNK.min((bytes - sent) as usize);
            sent += n as u64;
            let chunk = pb::FileChunk { path: "in".into(), data: piece[..n].to_vec(), last: sent == bytes, mode: 0 };
            if requests.send(pb::ExecuteRequest { msg: Some(Msg::Input(chunk)) }).await.is_err() {
                return;
            }
        }
        requests.closed().await;
    });
    let mut responses = client.execute(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(response) = responses.message().await? {
        if let Some(Event::Exited(exited)) = response.event {
            sender.abort();
            anyhow::ensure!(exited.status == Some(pb::exited::Status::Code(0)), "the job saw another size: {exited:?}");
            return Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
        }
    }
    bail!("the call ended without exited")
}

/// A job writes `bytes` into a file that comes back as output chunks; MB/s from the first chunk to
/// `exited`.
pub(super) async fn output_rate(server: &BenchServer, bytes: u64) -> anyhow::Result<f64> {
    let mut client = server.client().await?;
    let start = pb::StartJob {
        command: vec!["sh".into(), "-c".into(), format!("head -c {bytes} /dev/zero > out")],
        outputs: vec!["out".into()],
        ..Default::default()
    };
    let (requests, rx) = mpsc::channel(1);
    requests.send(pb::ExecuteRequest { msg: Some(Msg::Start(start)) }).await?;
    let mut responses = client.execute(ReceiverStream::new(rx)).await?.into_inner();
    let (mut first, mut received) = (None, 0u64);
    while let Some(response) = responses.message().await? {
        match response.event {
            Some(Event::Output(chunk)) => {
                first.get_or_insert_with(Instant::now);
                received += chunk.data.len() as u64;
            }
            Some(Event::Exited(_)) => {
                anyhow::ensure!(received == bytes, "received {received} of {bytes} bytes");
                let t = first.context("no output chunk came")?;
                return Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
            }
            _ => {}
        }
    }
    bail!("the call ended without exited")
}

/// `cat FILE > /dev/null` of a `bytes` file in the page cache (read once before timing).
pub(super) fn floor_cat(bytes: u64) -> anyhow::Result<f64> {
    let path = std::env::temp_dir().join(format!("forkpool-bench-cat-{}", std::process::id()));
    let status =
        Command::new("sh").args(["-c", &format!("head -c {bytes} /dev/zero > {}", path.display())]).status()?;
    anyhow::ensure!(status.success(), "cannot write the floor's file");
    let cat = || Command::new("sh").args(["-c", &format!("cat {} > /dev/null", path.display())]).status();
    cat()?;
    let t = Instant::now();
    let status = cat()?;
    let rate = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(status.success(), "cat failed");
    Ok(rate)
}
