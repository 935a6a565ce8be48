//! Files in and out (`StartJob.inputs`, `input` chunks, `StartJob.outputs`, `output` chunks): byte-exact round
//! trips, nested paths and modes, every malformed upload and every path attack, the caps, an upload that
//! holds no worker slot, cancels mid-upload and mid-download, and flat server memory under a large output.

use std::time::Duration;

use forkpool::pb::{self, execute_request::Msg};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::common::*;

fn declared(path: &str, size: u64, mode: u32) -> pb::InputFile {
    pb::InputFile { path: path.into(), size, mode, content: Vec::new() }
}

fn inline(path: &str, content: &[u8]) -> pb::InputFile {
    pb::InputFile { path: path.into(), size: content.len() as u64, mode: 0, content: content.to_vec() }
}

fn chunk_msg(path: &str, data: &[u8], last: bool) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        msg: Some(Msg::Input(pb::FileChunk { path: path.into(), data: data.to_vec(), last, mode: 0 })),
    }
}

fn with_files(start: pb::StartJob, inputs: Vec<pb::InputFile>, outputs: &[&str]) -> pb::StartJob {
    pb::StartJob { inputs, outputs: outputs.iter().map(|s| s.to_string()).collect(), ..start }
}

/// Sends `data` as `input` chunks of `chunk` bytes, the last one flagged (an empty file needs none).
async fn upload(call: &OpenCall, path: &str, data: &[u8], chunk: usize) {
    let mut pieces = data.chunks(chunk).peekable();
    while let Some(piece) = pieces.next() {
        call.send(chunk_msg(path, piece, pieces.peek().is_none())).await;
    }
}

/// The server's job directories (its instance's), by name (not the emptied ones it keeps for the next jobs,
/// `.spare-N`).
fn job_dirs(work_root: &std::path::Path) -> Vec<String> {
    let Ok(instances) = std::fs::read_dir(work_root) else { return Vec::new() };
    instances
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|i| std::fs::read_dir(i.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(".spare-"))
        .collect()
}

fn server_with(name: &str, extra: &str) -> (TestServer, std::path::PathBuf) {
    let work_root = fresh_work_root("files", name, Mode::Fallback);
    let toml = format!("allow_raw_commands = true\nwork_root = {:?}\n{extra}", work_root.display().to_string());
    (TestServer::with_config(&toml, &[]), work_root)
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_byte_exact_at_every_size() {
    let (server, _) = server_with("sizes", "");
    let mut client = server.client().await;
    for size in [0usize, 1, 65_535, 65_536, 65_537, 131_072, 1_000_003] {
        let mut data = vec![0u8; size];
        rand::rng().fill_bytes(&mut data);
        let start = with_files(sh("cp in.bin out.bin"), vec![declared("in.bin", size as u64, 0)], &["out.bin"]);
        let mut call = OpenCall::open(&mut client, start).await.expect("open");
        upload(&call, "in.bin", &data, 64 * 1024).await;
        call.half_close();
        let out = call.finish().await;
        assert_eq!(out.code(), Some(0), "{size} bytes: {:?}", out.status);
        assert!(out.file("out.bin") == data.as_slice(), "{size} bytes: content differs");
        assert_eq!(out.output_states(), [("out.bin".to_string(), pb::OutputState::Sent, size as u64)]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_megabytes_of_random_data_keep_their_sha256_both_ways() {
    let (server, _) = server_with("big", "");
    let mut client = server.client().await;
    let mut data = vec![0u8; 100 << 20];
    rand::rng().fill_bytes(&mut data);
    let digest = format!("{:x}", Sha256::digest(&data));
    let script = "sha256sum in.bin | cut -d' ' -f1; cp in.bin out.bin";
    let start = with_files(sh(script), vec![declared("in.bin", data.len() as u64, 0)], &["out.bin"]);
    let mut call = OpenCall::open(&mut client, start).await.expect("open");
    upload(&call, "in.bin", &data, 1 << 20).await;
    call.half_close();
    let out = call.finish().await;
    assert_eq!(out.stdout_text().trim(), digest, "the job saw different bytes: {:?}", out.status);
    assert_eq!(format!("{:x}", Sha256::digest(out.file("out.bin"))), digest, "the output differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_small_files_nested_directories_and_modes() {
    let (server, _) = server_with("many", "[limits]\nfile_count = 2100\n");
    let mut client = server.client().await;
    let mut inputs: Vec<pb::InputFile> =
        (0..1000).map(|i| inline(&format!("in/{:02}/{i:04}.txt", i % 10), format!("file {i}\n").as_bytes())).collect();
    inputs.push(pb::InputFile { mode: 0o750, ..inline("bin/run.sh", b"#!/bin/sh\necho ran\n") });
    inputs.push(pb::InputFile { mode: 0o600, ..declared("a/b/c/empty", 0, 0) });
    let script = "./bin/run.sh; stat -c '%a %n' bin/run.sh a/b/c/empty; mkdir -p out && cp -r in out/copy \
                  && printf x > out/private && chmod 600 out/private";
    let start = with_files(sh(script), inputs, &["out/**", "a/b/c/empty"]);
    let out = run(&mut client, start).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout_text(), "ran\n750 bin/run.sh\n600 a/b/c/empty\n");
    for i in [0, 1, 499, 999] {
        let path = format!("out/copy/{:02}/{i:04}.txt", i % 10);
        assert_eq!(out.file(&path), format!("file {i}\n").as_bytes());
    }
    let sent = out.output_states().iter().filter(|(_, s, _)| *s == pb::OutputState::Sent).count();
    assert_eq!(sent, 1002, "1000 copies, out/private and the empty file");
    assert_eq!(out.files.get("out/private").map(|f| f.1), Some(0o600), "mode not reported");
    assert_eq!(out.file("a/b/c/empty"), b"");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_uploads_are_invalid_argument_and_leave_nothing() {
    let (server, work_root) = server_with("malformed", "");
    let mut client = server.client().await;
    let two = || vec![declared("a.txt", 4, 0), declared("b.txt", 2, 0)];
    type Steps = Vec<pb::ExecuteRequest>;
    let cases: Vec<(&str, Steps, &str)> = vec![
        ("wrong path", vec![chunk_msg("b.txt", b"xx", true)], "comes later"),
        ("undeclared", vec![chunk_msg("c.txt", b"xx", true)], "not a declared input"),
        ("too many bytes", vec![chunk_msg("a.txt", b"12345", true)], "5 bytes sent, its declared size is 4"),
        ("too few bytes", vec![chunk_msg("a.txt", b"12", true)], "after 2 of its 4 bytes"),
        (
            "chunk after last",
            vec![chunk_msg("a.txt", b"1234", true), chunk_msg("a.txt", b"", true)],
            "complete already",
        ),
        ("stdin first", vec![stdin_msg(b"hi")], "got `stdin`"),
        ("signal first", vec![signal_msg(pb::Signal::Term)], "got `signal`"),
        ("close_stdin first", vec![close_stdin_msg()], "got `close_stdin`"),
    ];
    for (what, steps, expected) in cases {
        let call = OpenCall::open(&mut client, with_files(sh("true"), two(), &[])).await.expect("open");
        for step in steps {
            call.send(step).await;
        }
        let out = call.finish().await;
        let status = out.status.as_ref().unwrap_or_else(|| panic!("{what}: no error: {out:?}"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: {:?} lacks {expected:?}", status.message());
        assert!(out.pid.is_none(), "{what}: a worker was started");
    }
    // The stream ending mid-upload.
    let mut call = OpenCall::open(&mut client, with_files(sh("true"), two(), &[])).await.expect("open");
    call.send(chunk_msg("a.txt", b"12", false)).await;
    call.half_close();
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(tonic::Code::InvalidArgument), "{out:?}");
    // Declared twice, a file that is also a directory, an inline size that lies: refused before anything.
    for inputs in [
        vec![declared("a", 1, 0), declared("a", 1, 0)],
        vec![declared("a", 1, 0), declared("a/b", 1, 0)],
        vec![pb::InputFile { size: 9, ..inline("a", b"abc") }],
    ] {
        assert_eq!(
            run(&mut client, with_files(sh("true"), inputs, &[])).await.error_code(),
            Some(tonic::Code::InvalidArgument)
        );
    }
    // An `input` after the uploads were complete ends the running job.
    let mut call = OpenCall::open(&mut client, with_files(sh("echo ready; sleep 100"), vec![inline("x", b"1")], &[]))
        .await
        .expect("open");
    call.wait_stdout("ready").await;
    call.send(chunk_msg("x", b"2", true)).await;
    assert_eq!(call.finish().await.error_code(), Some(tonic::Code::InvalidArgument));
    assert!(wait_until(Duration::from_secs(5), || job_dirs(&work_root).is_empty()), "{:?}", job_dirs(&work_root));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_path_leads_out_of_the_job_directory() {
    // The server's own checks, with the job's /tmp shared: in a private /tmp (the default) the job could not
    // even see, or link to, the file outside its directory.
    let (server, work_root) = server_with("attacks", "[isolation]\nprivate_tmp = false\n");
    let mut client = server.client().await;
    for bad in ["../x", "/etc/passwd", "a/../../x", "a\0b", "", "a//b", "./a"] {
        let out = run(&mut client, with_files(sh("true"), vec![inline(bad, b"x")], &[])).await;
        assert_eq!(out.error_code(), Some(tonic::Code::InvalidArgument), "input {bad:?}: {out:?}");
        let out = run(&mut client, with_files(sh("true"), vec![], &[bad])).await;
        assert_eq!(out.error_code(), Some(tonic::Code::InvalidArgument), "output {bad:?}: {out:?}");
    }
    // A file outside the directory, on the same filesystem, for the hard link.
    let outside = work_root.join("outside-secret");
    std::fs::write(&outside, b"SECRET").expect("write");
    // Writable by all, so the kernel lets even a dynamic user link it (fs.protected_hardlinks).
    std::fs::set_permissions(&outside, std::os::unix::fs::PermissionsExt::from_mode(0o666)).expect("chmod");
    let script = format!(
        "ln -s /etc/passwd link; mkdir d; ln -s / d/root; mkfifo fifo; ln {outside} hard; mkdir dir; \
         ln -s /etc etc; echo ok > real",
        outside = outside.display()
    );
    let outputs = ["link", "d/root/etc/passwd", "fifo", "hard", "dir", "etc/passwd", "real", "nope", "*.none"];
    let out = run(&mut client, with_files(sh(&script), vec![], &outputs)).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let states = out.output_states();
    let state = |p: &str| states.iter().find(|(path, ..)| path == p).map(|(_, s, _)| *s);
    for p in ["link", "d/root/etc/passwd", "fifo", "hard", "dir", "etc/passwd"] {
        assert_eq!(state(p), Some(pb::OutputState::NotRegular), "{p}: {states:?}");
    }
    assert_eq!(state("real"), Some(pb::OutputState::Sent));
    assert_eq!(state("nope"), Some(pb::OutputState::Missing));
    assert_eq!(state("*.none"), Some(pb::OutputState::Missing));
    assert_eq!(out.files.keys().collect::<Vec<_>>(), ["real"], "bytes of something else were sent");
    // A pattern meets the same entries and sends none of them either.
    let out = run(&mut client, with_files(sh(&script), vec![], &["*"])).await;
    assert_eq!(out.files.keys().collect::<Vec<_>>(), ["real"], "{:?}", out.output_states());
    assert!(out.output_states().iter().any(|(p, s, _)| p == "link" && *s == pb::OutputState::NotRegular));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_are_too_large_or_resource_exhausted() {
    let limits = "[limits]\ninput_bytes = 1000\noutput_file_bytes = 100\noutput_files_bytes = 150\nfile_count = 3\n";
    let (server, _) = server_with("caps", limits);
    let mut client = server.client().await;
    let out = run(&mut client, with_files(sh("true"), vec![declared("big", 1001, 0)], &[])).await;
    assert_eq!(out.error_code(), Some(tonic::Code::ResourceExhausted), "{out:?}");
    assert!(out.status.as_ref().is_some_and(|s| s.message().contains("input_bytes")));
    let four: Vec<_> = (0..4).map(|i| inline(&format!("f{i}"), b"x")).collect();
    assert_eq!(
        run(&mut client, with_files(sh("true"), four, &[])).await.error_code(),
        Some(tonic::Code::ResourceExhausted)
    );
    // 200 bytes: over the per-file cap; then 80 + 80 over the per-job cap; the file count (1 input + 2).
    let script = "head -c 200 /dev/zero > big; head -c 80 /dev/zero > a; head -c 80 /dev/zero > b; \
                  head -c 10 /dev/zero > c; head -c 10 /dev/zero > d";
    let out = run(&mut client, with_files(sh(script), vec![inline("in", b"1")], &["big", "a", "b", "c", "d"])).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.output_states(),
        [
            ("big".to_string(), pb::OutputState::TooLarge, 200),
            ("a".to_string(), pb::OutputState::Sent, 80),
            ("b".to_string(), pb::OutputState::TooLarge, 80),
            ("c".to_string(), pb::OutputState::Sent, 10),
            ("d".to_string(), pb::OutputState::TooLarge, 10),
        ]
    );
    assert_eq!(out.files.keys().collect::<Vec<_>>(), ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_uploader_holds_no_worker_slot() {
    let work_root = fresh_work_root("files", "slow", Mode::Fallback);
    let toml = format!("allow_raw_commands = true\nworkers = 1\nwork_root = {:?}\n", work_root.display().to_string());
    let server = TestServer::with_config(&toml, &[]);
    let mut client = server.client().await;
    let mut slow =
        OpenCall::open(&mut client, with_files(sh("cat in"), vec![declared("in", 10, 0)], &[])).await.expect("open");
    slow.send(chunk_msg("in", b"12345", false)).await;
    // With one worker, a second call runs to its end while the first is still uploading (were the upload
    // holding the only slot, this would wait for it: the timeout turns that into a failure).
    let other = tokio::time::timeout(Duration::from_secs(20), run(&mut client, sh("echo ran"))).await;
    let other = other.expect("the second call waited for the uploading one");
    assert_eq!(other.stdout_text(), "ran\n", "{other:?}");
    slow.send(chunk_msg("in", b"67890", true)).await;
    slow.half_close();
    let out = slow.finish().await;
    assert_eq!(out.stdout_text(), "1234567890");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_mid_upload_and_mid_download_leaves_no_directory_and_no_process() {
    let (server, work_root) = server_with("cancel", "");
    let mut client = server.client().await;
    let before = get_status(&mut client).await.started_total;
    let call =
        OpenCall::open(&mut client, with_files(sh("true"), vec![declared("in", 1 << 20, 0)], &[])).await.expect("open");
    call.send(chunk_msg("in", &[7u8; 1000], false)).await;
    assert!(wait_until(Duration::from_secs(5), || job_dirs(&work_root).len() == 1), "no staged directory");
    drop(call);
    assert!(wait_until(Duration::from_secs(5), || job_dirs(&work_root).is_empty()), "{:?}", job_dirs(&work_root));
    assert_eq!(get_status(&mut client).await.started_total, before, "a cancelled upload started a worker");

    let mut call = OpenCall::open(&mut client, with_files(sh("head -c 50000000 /dev/zero > big"), vec![], &["big"]))
        .await
        .expect("open");
    while call.outcome.files.is_empty() {
        assert!(call.next().await.is_some(), "{:?}", call.outcome.status);
    }
    drop(call);
    assert!(wait_until(Duration::from_secs(5), || job_dirs(&work_root).is_empty()), "{:?}", job_dirs(&work_root));
    assert_eq!(settled_status(&mut client).await.running, 0);
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_output_to_a_slow_reader_keeps_server_memory_flat() {
    let (server, _) = server_with("flat", "[limits]\noutput_file_bytes = \"2GiB\"\noutput_files_bytes = \"2GiB\"\n");
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    let before = rss_kib(server.pid);
    // A sparse gigabyte: no disk needed, every byte still read and sent.
    let mut call =
        OpenCall::open(&mut client, with_files(sh("truncate -s 1G big"), vec![], &["big"])).await.expect("open");
    let mut received = 0usize;
    let mut peak = before;
    while let Some(event) = call.responses.message().await.expect("stream") {
        if let Some(pb::execute_response::Event::Output(chunk)) = event.event {
            received += chunk.data.len();
            if received % (4 << 20) < chunk.data.len() {
                peak = peak.max(rss_kib(server.pid));
                // Slower than the server can send: its buffers, not its memory, must absorb it.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    eprintln!("server RSS {before} KiB before, peak {peak} KiB while a 1 GiB output streamed to a slow reader");
    assert_eq!(received, 1 << 30);
    assert!(peak < before + 32 * 1024, "server RSS grew from {before} KiB to {peak} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_jobs_take_files_only_when_configured() {
    let server = TestServer::start(&[]);
    let mut client = server.client().await;
    let jobs = client.list_jobs(pb::ListJobsRequest {}).await.expect("ListJobs").into_inner().jobs;
    let accepts: Vec<(&str, bool)> = jobs.iter().map(|j| (j.name.as_str(), j.accepts_files)).collect();
    assert!(accepts.contains(&("sort", true)) && accepts.contains(&("cat", false)), "{accepts:?}");
    let start = with_files(job("sort", &[]), vec![inline("input.txt", b"pear\napple\nfig\n")], &["sorted.txt"]);
    let out = run(&mut client, start).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.file("sorted.txt"), b"apple\nfig\npear\n");
    let out = run(&mut client, with_files(job("cat", &[]), vec![inline("x", b"1")], &[])).await;
    assert_eq!(out.error_code(), Some(tonic::Code::PermissionDenied), "{out:?}");
    let out = run(&mut client, with_files(job("cat", &[]), vec![], &["x"])).await;
    assert_eq!(out.error_code(), Some(tonic::Code::PermissionDenied), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_after_a_timeout_and_after_the_directory_is_gone() {
    // Dynamic users off: only a job running as root can remove its own directory; and no private /tmp, where
    // the directory is a mount point the job cannot remove.
    let (server, _) = server_with("endings", "[isolation]\ndynamic_users = false\nprivate_tmp = false\n");
    let mut client = server.client().await;
    let start = pb::StartJob {
        timeout: duration(Duration::from_secs(2)),
        ..with_files(sh("echo partial > log; sleep 100"), vec![], &["log"])
    };
    let out = run(&mut client, start).await;
    assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut), "{out:?}");
    assert_eq!(out.file("log"), b"partial\n");
    // A job that removes its own directory: what it was asked for is missing, and the call still ends well.
    let out = run(&mut client, with_files(sh("cd / && rm -rf \"$HOME\""), vec![], &["x", "*.y"])).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.output_states(),
        [("x".to_string(), pb::OutputState::Missing, 0), ("*.y".to_string(), pb::OutputState::Missing, 0)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_or_deep_tree_keeps_exited_small_and_the_server_up() {
    let (server, _) = server_with("huge", "");
    let mut client = server.client().await;
    // 3000 files and a tree 400 levels deep (deeper than any path that can be requested).
    let script = "mkdir many && cd many && seq 3000 | xargs touch && cd .. \
                  && d=deep && for i in $(seq 400); do d=$d/abc; done && mkdir -p $d && touch $d/bottom";
    let out = run(&mut client, with_files(sh(script), vec![], &["**", "many/1", "x{1}.txt"])).await;
    assert_eq!(out.code(), Some(0), "{:?}", out.status);
    let states = out.output_states();
    let sent = states.iter().filter(|(_, s, _)| *s == pb::OutputState::Sent).count();
    assert_eq!(sent, 1000, "file_count bounds what is sent");
    assert!(states.len() <= 2000, "{} entries in exited", states.len());
    assert!(!states.iter().any(|(p, ..)| p.ends_with("bottom")), "a path longer than any request was matched");
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_upload_is_dropped_and_a_drain_stops_uploads_at_once() {
    let (server, work_root) = server_with("idle", "upload_idle_timeout = \"300ms\"\n");
    let mut client = server.client().await;
    let call =
        OpenCall::open(&mut client, with_files(sh("true"), vec![declared("in", 10, 0)], &[])).await.expect("open");
    call.send(chunk_msg("in", b"12345", false)).await;
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(tonic::Code::DeadlineExceeded), "{out:?}");
    assert!(out.status.as_ref().is_some_and(|s| s.message().contains("upload_idle_timeout")), "{out:?}");
    assert!(wait_until(Duration::from_secs(5), || job_dirs(&work_root).is_empty()), "{:?}", job_dirs(&work_root));

    // A drain does not wait for an upload: its job could never start. (A server of its own, with the default
    // idle timeout, so the drain is what ends the upload.)
    drop(client);
    drop(server);
    let (mut server, work_root) = server_with("drain", "");
    let mut client = server.client().await;
    let mut slow =
        OpenCall::open(&mut client, with_files(sh("true"), vec![declared("in", 10, 0)], &[])).await.expect("open");
    slow.send(chunk_msg("in", b"1", false)).await;
    assert!(wait_until(Duration::from_secs(5), || job_dirs(&work_root).len() == 1));
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while slow.next().await.is_some() {}
        slow.outcome
    })
    .await
    .expect("the drain waited for the upload");
    assert_eq!(ended.error_code(), Some(tonic::Code::Unavailable), "{ended:?}");
    let status = server.wait_exit(Duration::from_secs(10)).expect("the server exited");
    assert!(status.success(), "{status:?}");
}
