//! Mutual TLS between the agent and its peers: the agent serves its sampling service over TLS
//! and requires a client certificate from the CA; it registers with an https coordinator,
//! verifying it against the same CA and presenting its own certificate.
//!
//! Certificates are made by the `openssl` command-line tool at test time (a throw-away CA, one
//! certificate for the agent, one for the coordinator / sampling client).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
mod run_support;

use flamegrid_proto::v1::{self, sampling_client::SamplingClient};
use run_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
    fn identity(&self, who: &str) -> Identity {
        Identity::from_pem(
            self.read(&format!("{who}.pem")),
            self.read(&format!("{who}.key")),
        )
    }
    fn ca(&self) -> Certificate {
        Certificate::from_pem(self.read("ca.pem"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl tool");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and two leaf certificates (`agent`, `peer`), valid for 127.0.0.1 and localhost.
fn make_pki() -> Pki {
    let dir = temp_path("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flamegrid-test-ca",
    ]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&dir, &ca);
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for who in ["agent", "peer"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let subj = format!("/CN={who}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&dir, &req);
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        );
    }
    Pki { dir }
}

async fn tls_client(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<SamplingClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(SamplingClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_both_ways() {
    let pki = make_pki();
    let coord = FakeCoordinator::start_tls(
        ServerTlsConfig::new()
            .identity(pki.identity("peer"))
            .client_ca_root(pki.ca()),
    )
    .await;
    let (cert, key, ca) = (
        pki.path("agent.pem"),
        pki.path("agent.key"),
        pki.path("ca.pem"),
    );
    let mut agent = AgentProcess::start(&[
        "--coordinator",
        &coord.url(),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-ca",
        ca.to_str().unwrap(),
    ]);
    let addr = agent.wait_listening().await;

    // Registration went over mutual TLS (the coordinator demands a client certificate).
    let (reg, _) = coord.wait_registration(1).await;
    assert_eq!(
        reg.address,
        format!("https://{addr}"),
        "a TLS agent advertises https"
    );

    // A client with a certificate from the CA is served.
    let full = ClientTlsConfig::new()
        .ca_certificate(pki.ca())
        .identity(pki.identity("peer"))
        .domain_name("localhost");
    let mut client = tls_client(addr, full).await.unwrap();
    let status = client
        .sample(v1::SampleRequest {
            selectors: vec![by_pid("x", 1, "")],
            num_samples: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "served past TLS: {status:?}"
    );

    // Without a client certificate, or in plain text, nothing gets through.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(pki.ca())
        .domain_name("localhost");
    let refused = match tls_client(addr, anonymous).await {
        Err(_) => true,
        Ok(mut c) => c
            .thread_dump(v1::ThreadDumpRequest {
                selectors: vec![by_pid("x", 1, "")],
                max_depth: 1,
            })
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let plain = match SamplingClient::connect(format!("http://{addr}")).await {
        Err(_) => true,
        Ok(mut c) => c
            .thread_dump(v1::ThreadDumpRequest {
                selectors: vec![by_pid("x", 1, "")],
                max_depth: 1,
            })
            .await
            .is_err(),
    };
    assert!(plain, "a plain-text client was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_coordinator_without_ca_is_refused_at_start() {
    let mut agent = AgentProcess::start(&[
        "--coordinator",
        "https://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!agent.wait_exit().await.success());
    assert!(agent.stderr().contains("--tls-ca"), "{}", agent.stderr());
}
