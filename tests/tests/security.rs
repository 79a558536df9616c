//! Authentication and hostile peers: calls without the run's token, a gradient buffer of the
//! wrong length and an oversized message are refused with a clear status while a run is going,
//! and the run's numbers do not change; mutual TLS works and refuses clients without a
//! certificate of the run's CA.
// one_at_a_time's guard serialises whole tests (each on its own runtime, taking the lock once
// at the start), so holding it across awaits cannot deadlock.
#![allow(clippy::await_holding_lock)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use peftrain_proto::v1 as pb;
use peftrain_tests::{bin, glue_dir, logged, peftrain, roberta_dir, spawn_logged, step_losses, tiny_roberta};
use tonic::Code;

const TOKEN: &str = "security-test-token";

fn args(model: &Path, out: &Path, steps: &str) -> Vec<String> {
    let (tok, glue) = (roberta_dir(), glue_dir());
    [
        "train",
        "--workers",
        "2",
        "--threads",
        "1",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--method",
        "bitfit",
        "--train-limit",
        "640",
        "--eval-limit",
        "16",
        "--batch-size",
        "16",
        "--max-steps",
        steps,
        "--logging-steps",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(args: &[String], envs: &[(&str, &str)]) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(bin("peftrain"));
    cmd.args(args).env("RUST_LOG", "info").env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker")).stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    spawn_logged(cmd)
}

fn chunk(total: u64, bytes: usize) -> pb::GradChunk {
    pb::GradChunk { step: 0, generation: u64::MAX, from_rank: 0, round: 0, offset: 0, data: vec![0u8; bytes].into(), total }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_are_refused_and_change_nothing() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 4);
    let (base, attacked) = (d.path().join("base"), d.path().join("attacked"));
    let base_args = args(&model, &base, "150");
    peftrain(&base_args.iter().map(|s| s.as_str()).collect::<Vec<_>>());

    let (mut run, log) = spawn(&args(&model, &attacked, "150"), &[("PEFTRAIN_TOKEN", TOKEN)]);
    let coordinator = logged(&log, "address");
    let worker = logged(&log, "worker_address");
    let ep = |a: &str| tonic::transport::Endpoint::from_shared(format!("http://{a}")).unwrap().connect_lazy();
    let token = peftrain_net::Security::default().with_token(TOKEN);

    // No token: refused by the coordinator and by a worker.
    let mut c = pb::coordinator_client::CoordinatorClient::new(ep(&coordinator));
    let e = c.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "mallory".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut w = pb::worker_client::WorkerClient::new(ep(&worker));
    let e = w.shutdown(pb::ShutdownRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut col = pb::collective_client::CollectiveClient::new(ep(&worker));
    let e = col.push(tokio_stream::iter(vec![chunk(10, 40)])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // With the token but a gradient buffer of the wrong length: refused.
    let mut col = pb::collective_client::CollectiveClient::with_interceptor(ep(&worker), token.client_auth());
    let e = col.push(tokio_stream::iter(vec![chunk(7, 28)])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("gradient buffer of 7 values"), "{}", e.message());
    // Over the size limit (4 MiB for a gradient chunk): refused.
    let e = col.push(tokio_stream::iter(vec![chunk(7, 5 << 20)])).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e}");
    // A registration over the coordinator's size limit: refused.
    let mut c = pb::coordinator_client::CoordinatorClient::with_interceptor(ep(&coordinator), token.client_auth());
    let e = c.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "x".repeat(5 << 20) }).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e}");

    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    let (a, b) = (step_losses(&base), step_losses(&attacked));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert_eq!(a.len(), b.len());
    assert!(worst <= 1e-5, "the run's losses moved by {worst}");
}

/// A CA, and a certificate it signs for 127.0.0.1/localhost usable as server and client.
fn pki(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let w = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (w("ca.pem", ca_cert.pem()), w("cert.pem", cert.pem()), w("key.pem", key.serialize_pem()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_trains_and_refuses_clients_without_a_certificate() {
    let _serial = peftrain_tests::one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 5);
    let (ca, cert, key) = pki(d.path());
    let out = d.path().join("tls");
    let mut a = args(&model, &out, "60");
    a.extend(["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca].iter().map(|s| s.to_string()));
    let (mut run, log) = spawn(&a, &[("PEFTRAIN_TOKEN", TOKEN)]);
    let coordinator = logged(&log, "address");
    // Plain HTTP/2 to a TLS port fails; TLS without a client certificate is refused in the
    // handshake, whatever the token.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{coordinator}")).unwrap().connect_lazy();
    let mut c = pb::coordinator_client::CoordinatorClient::with_interceptor(plain, peftrain_net::Security::default().with_token(TOKEN).client_auth());
    assert!(c.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "p".into() }).await.is_err());
    let no_cert = peftrain_net::Security::load(&peftrain_net::SecurityArgs {
        tls_ca: Some(ca.clone().into()),
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .unwrap();
    let ch = no_cert.endpoint(&coordinator, Duration::from_secs(5)).unwrap().connect_lazy();
    let mut c = pb::coordinator_client::CoordinatorClient::with_interceptor(ch, no_cert.client_auth());
    let e = c.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "n".into() }).await.unwrap_err();
    // TLS 1.3 finishes the client's side of the handshake before the server checks its
    // certificate, so the refusal reaches the client as the server's alert, a broken pipe or a
    // cancelled stream, depending on timing. What is fixed: the transport failed. The token is
    // valid, so a connection the server had accepted would have answered Hello.
    let transport = std::error::Error::source(&e).is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some());
    assert!(transport, "refused in the TLS handshake, not by the service: {e:?}");
    // With the run's certificate and token: served.
    let full = peftrain_net::Security::load(&peftrain_net::SecurityArgs {
        tls_ca: Some(ca.into()),
        tls_cert: Some(cert.into()),
        tls_key: Some(key.into()),
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .unwrap();
    let ch = full.endpoint(&coordinator, Duration::from_secs(5)).unwrap().connect_lazy();
    let mut c = pb::coordinator_client::CoordinatorClient::with_interceptor(ch, full.client_auth());
    c.hello(pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: "ok".into() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "the run over mutual TLS finished");
    assert_eq!(step_losses(&out).len(), 60);
}

/// A TLS configuration the Coordinator service cannot serve with (a CA, but no certificate
/// and key) is an error before anything listens: never a plaintext server instead.
#[tokio::test]
async fn a_tls_configuration_that_cannot_serve_fails_closed() {
    let d = tempfile::tempdir().unwrap();
    let (ca, _, _) = pki(d.path());
    let security =
        peftrain_net::Security::load(&peftrain_net::SecurityArgs { tls_ca: Some(ca.into()), token: Some(TOKEN.into()), ..Default::default() })
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = std::sync::Arc::new(peftrain::registry::Registry::new("run-tls".into(), pb::RunSpec::default(), 1));
    let served = tokio::time::timeout(Duration::from_secs(5), peftrain::service::serve(listener, registry, &security, std::future::pending())).await;
    match served {
        Ok(Err(e)) => assert!(e.to_string().contains("--tls-cert"), "{e}"),
        Ok(Ok(())) => panic!("serve returned without serving"),
        Err(_) => panic!("the service kept serving (in plaintext) on a TLS configuration it cannot use"),
    }
}

/// A peer's gradient chunk that does not fit is refused as what it is, not as a "bad shard".
#[test]
fn a_refused_gradient_chunk_is_named_as_one() {
    let e = peftrain_worker::service::check_chunk(&chunk(7, 28), 40, 0).unwrap_err();
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("gradient chunk refused: gradient buffer of 7 values"), "{}", status.message());
    let e = peftrain_worker::service::check_chunk(&pb::GradChunk { offset: 39, ..chunk(40, 8) }, 40, 0).unwrap_err();
    assert!(!e.to_string().contains("shard"), "{e}");
}

#[test]
fn empty_short_and_placeholder_tokens_are_refused_at_start() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let out = d.path().join("never");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let coordinator = |env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = Command::new(bin("peftrain"));
        cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap()])
            .args(["--glue-dir", glue.to_str().unwrap(), "--output-dir", out.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "error")
            .env_remove("PEFTRAIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let worker = |env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = Command::new(bin("peftrain"));
        cmd.args(["worker", "--coordinator", "http://127.0.0.1:9"]).args(extra).env("RUST_LOG", "error").env_remove("PEFTRAIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // The base kustomization's old placeholder, a short word, an empty file, none at all.
    let placeholder = [("PEFTRAIN_TOKEN", "CHANGE-ME-placeholder-token-replace-before-use")];
    let short = d.path().join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    let empty = d.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    struct Case<'a> {
        env: &'a [(&'a str, &'a str)],
        extra: Vec<&'a str>,
        says: &'a [&'a str],
    }
    let cases = [
        Case { env: &placeholder, extra: vec![], says: &["PEFTRAIN_TOKEN", "placeholder"] },
        Case { env: &[], extra: vec!["--token-file", short.to_str().unwrap()], says: &["short", "7 characters", "fewer than 16"] },
        Case { env: &[], extra: vec!["--token-file", empty.to_str().unwrap()], says: &["empty", "the token is empty"] },
        Case { env: &[], extra: vec![], says: &["shared token", "--token-file"] },
    ];
    for c in &cases {
        for (who, o) in [("coordinator", coordinator(c.env, &c.extra)), ("worker", worker(c.env, &c.extra))] {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{who} {:?}: {err}", c.extra);
            peftrain_tests::assert_one_clear_line(&err, c.says);
        }
    }
    assert!(!out.exists(), "a refused coordinator wrote {}", out.display());
}
