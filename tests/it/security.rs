//! TLS, mutual TLS and bearer tokens, checked from the outside with real certificates and real calls.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use forkpool::cli::{Client, Connection, connect};
use forkpool::pb::{self, execute_response::Event};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files in a fresh dir.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        for (who, names, usage) in [
            ("server", vec!["localhost".to_string(), "127.0.0.1".to_string()], ExtendedKeyUsagePurpose::ServerAuth),
            ("client", vec!["forkpool-test-client".to_string()], ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("sign");
            std::fs::write(dir.join(format!("{who}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).expect("write");
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

fn https(server: &TestServer) -> String {
    server.url.replace("http://", "https://")
}

/// Runs the catalog `echo` job; the output, or the status the call failed with.
async fn echo(client: &mut Client) -> Result<String, tonic::Status> {
    let start = pb::ExecuteRequest { msg: Some(pb::execute_request::Msg::Start(job("echo", &["secure"]))) };
    let mut responses = client.execute(tokio_stream::iter(vec![start])).await?.into_inner();
    let mut out = String::new();
    while let Some(response) = responses.message().await? {
        if let Some(Event::Stdout(bytes)) = response.event {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    Ok(out)
}

fn connection(server: String) -> Connection {
    Connection { server, ..Connection::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let pki = Pki::new("tls");
    let server = TestServer::start(&["--tls-cert", &pki.path("server.pem"), "--tls-key", &pki.path("server.key")]);
    let mut secure = connect(&Connection { ca_cert: Some(pki.dir.join("ca.pem")), ..connection(https(&server)) })
        .await
        .expect("TLS connect");
    assert_eq!(echo(&mut secure).await.expect("echo over TLS"), "secure\n");
    let plain = match connect(&connection(server.url.clone())).await {
        Ok(mut client) => echo(&mut client).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain, "a plaintext client must not get through");
    let untrusted = match connect(&connection(https(&server))).await {
        Ok(mut client) => echo(&mut client).await.is_ok(),
        Err(_) => false,
    };
    assert!(!untrusted, "a client that does not trust the CA must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new("mtls");
    let server = TestServer::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--tls-client-ca",
        &pki.path("ca.pem"),
    ]);
    let base = Connection { ca_cert: Some(pki.dir.join("ca.pem")), ..connection(https(&server)) };
    let anonymous = match connect(&base).await {
        Ok(mut client) => echo(&mut client).await.is_ok(),
        Err(_) => false,
    };
    assert!(!anonymous, "a client without a certificate must be refused");
    let identity = Some((pki.dir.join("client.pem"), pki.dir.join("client.key")));
    let mut client = connect(&Connection { identity, ..base }).await.expect("mTLS connect");
    assert_eq!(echo(&mut client).await.expect("echo over mTLS"), "secure\n");
}

const FULL: &str = "full-access-token-0123456789";
const ECHO_ONLY: &str = "echo-only-token-0123456789";

fn token_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tokens-{name}-{}", std::process::id()));
    std::fs::write(&path, format!("# test tokens\n{FULL}\n{ECHO_ONLY} echo\n")).expect("write tokens");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_authenticate_and_limit_jobs_while_health_stays_open() {
    let tokens = token_file("auth");
    let server = TestServer::start(&["--allow-raw-commands", "--auth-token-file", tokens.to_str().expect("utf8")]);
    let with = |token: Option<&str>| Connection { token: token.map(String::from), ..connection(server.url.clone()) };

    for (token, what) in [(None, "no token"), (Some("not-a-token-at-all-xxxxxxxx"), "a wrong token")] {
        let mut client = connect(&with(token)).await.expect("connect");
        let status = echo(&mut client).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}: {status:?}");
        let status = client.get_status(pb::GetStatusRequest {}).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}: {status:?}");
    }
    let mut full = connect(&with(Some(FULL))).await.expect("connect");
    assert_eq!(echo(&mut full).await.expect("full token"), "secure\n");

    let mut limited = connect(&with(Some(ECHO_ONLY))).await.expect("connect");
    assert_eq!(echo(&mut limited).await.expect("echo-only token"), "secure\n");
    for start in [job("sleep", &["1"]), raw(&["true"])] {
        let request = pb::ExecuteRequest { msg: Some(pb::execute_request::Msg::Start(start)) };
        let status = limited.execute(tokio_stream::iter(vec![request])).await.expect_err("limited");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    // Probes need no token.
    let channel = server.channel().await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: "forkpool.v1.Executor".into() })
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // The CLI reads its token from a file.
    let run = |token_file: &Path| {
        Command::new(BIN)
            .args([
                "run",
                "--server",
                &server.url,
                "--token-file",
                token_file.to_str().expect("utf8"),
                "--job",
                "echo",
                "--",
                "cli",
            ])
            .output()
            .expect("forkpool run")
    };
    let out = run(&tokens);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cli\n", "{}", String::from_utf8_lossy(&out.stderr));
    let wrong = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wrong-token");
    std::fs::write(&wrong, "wrong-token-wrong-token-0000\n").expect("write");
    let out = run(&wrong);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
