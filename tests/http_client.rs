//! The one HTTP client over the real binary, against local servers: a registry lookup over
//! plain http pins the version the registry names; over https, a certificate no trusted
//! authority signed is refused with an error that names the certificate problem; and a CA the
//! platform store is pointed at (`SSL_CERT_FILE`, as on a machine behind a TLS-intercepting
//! proxy) is trusted, which shows the platform verifier is what checks certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rmcp::ServiceExt;
use serde_json::{Value, json};

use common::{call, data_dir};

const PACKAGE: &str = "@modelcontextprotocol/server-github";

/// Reads one HTTP request head and answers it with the newest version; returns the path.
fn answer(stream: &mut impl ReadWrite, version: &str) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1)?.to_string();
    let body = json!({"name": PACKAGE, "version": version}).to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).ok()?;
    stream.flush().ok()?;
    Some(path)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A registry on a loopback port, plain http or (with a certificate chain and key) https.
/// Returns its base URL and the paths it was asked for.
fn registry(
    tls: Option<Arc<rustls::ServerConfig>>,
    version: &'static str,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    std::thread::spawn(move || {
        // Bounded: the tests ask a few times at most.
        for stream in listener.incoming().take(20) {
            let Ok(stream) = stream else { continue };
            let path = match &tls {
                None => {
                    let mut plain = stream;
                    answer(&mut plain, version)
                }
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    // A client that refuses the certificate ends the handshake here.
                    answer(&mut rustls::StreamOwned::new(conn, stream), version)
                }
            };
            if let Some(p) = path {
                record.lock().unwrap().push(p);
            }
        }
    });
    (format!("{scheme}://localhost:{port}"), seen)
}

/// A throwaway CA and a server certificate for localhost signed by it (or, without a CA, a
/// self-signed one). Returns the server's TLS config and the CA certificate as PEM.
fn tls(signed_by_ca: bool) -> (Arc<rustls::ServerConfig>, String) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mcp-coordinator test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(names).unwrap();
    let leaf = if signed_by_ca {
        leaf_params.signed_by(&leaf_key, &ca).unwrap()
    } else {
        leaf_params.self_signed(&leaf_key).unwrap()
    };
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (Arc::new(config), ca.pem())
}

/// A home with one Cursor config launching an unpinned package, and a config whose npm
/// registry is `registry`.
fn setup(
    registry: &str,
) -> (
    tempfile::TempDir,
    tempfile::TempDir,
    std::path::PathBuf,
    String,
) {
    let data = data_dir();
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join(".cursor/mcp.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        serde_json::to_string_pretty(
            &json!({"mcpServers": {"github": {"command": "npx", "args": ["-y", PACKAGE]}}}),
        )
        .unwrap(),
    )
    .unwrap();
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[assessments]\nhome = \"{}\"\nprojects = []\nnpm_registry = \"{registry}\"\n",
            home.path().display()
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    (data, home, config, file)
}

/// Proposes pinning the package to the registry's newest version; returns the tool result
/// (structured content on success, the error text otherwise).
async fn propose_latest(
    data: &Path,
    config: &Path,
    file: &str,
    cert_file: Option<&Path>,
) -> Result<Value, String> {
    let mut cmd = common::command(data, &["--config", config.to_str().unwrap()]);
    // Only what the test sets decides which authorities are trusted.
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    // The registry is on loopback: no proxy of the machine's may stand in between.
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    if let Some(path) = cert_file {
        cmd.env("SSL_CERT_FILE", path);
    }
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let client = common::client_config("http-client-test")
        .serve(transport)
        .await
        .unwrap();
    let args = json!({"actions": [
        {"type": "pin_package_version", "file": file, "server": "github", "lookup_latest": true}
    ]});
    let result = call(client.peer(), "remediation_propose", args)
        .await
        .unwrap();
    let out = if result.is_error == Some(true) {
        Err(serde_json::to_string(&result.content).unwrap())
    } else {
        Ok(result.structured_content.unwrap())
    };
    client.cancel().await.unwrap();
    out
}

fn diff_of(proposed: &Value) -> String {
    proposed["remediation"]["files"][0]["diff"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_lookup_over_http_pins_the_version_the_registry_names() {
    let (url, seen) = registry(None, "2025.9.1");
    let (data, _home, config, file) = setup(&url);
    let proposed = propose_latest(data.path(), &config, &file, None)
        .await
        .unwrap();
    let diff = diff_of(&proposed);
    assert!(
        diff.contains(&format!("+        \"{PACKAGE}@2025.9.1\"")),
        "{diff}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["/@modelcontextprotocol%2Fserver-github/latest"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_is_refused_with_an_error_naming_it() {
    let (server, _ca) = tls(false);
    let (url, seen) = registry(Some(server), "2025.9.1");
    let (data, _home, config, file) = setup(&url);
    let error = propose_latest(data.path(), &config, &file, None)
        .await
        .unwrap_err();
    assert!(error.contains("TLS certificate problem"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("certificate store"), "{error}");
    assert!(seen.lock().unwrap().is_empty(), "no request got through");
}

/// On Linux the platform store is the system's CA files, which `SSL_CERT_FILE` replaces; macOS
/// asks the keychain instead, where a test cannot add a CA without a person.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_ca_in_the_platform_store_is_trusted() {
    let (server, ca_pem) = tls(true);
    let (url, seen) = registry(Some(server), "2025.9.2");
    let (data, _home, config, file) = setup(&url);
    let ca_file = data.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    // Without the CA the certificate is unknown...
    let error = propose_latest(data.path(), &config, &file, None)
        .await
        .unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    // ...and with SSL_CERT_FILE naming it, rustls-platform-verifier's Linux store trusts it.
    let proposed = propose_latest(data.path(), &config, &file, Some(&ca_file))
        .await
        .unwrap();
    let diff = diff_of(&proposed);
    assert!(
        diff.contains(&format!("+        \"{PACKAGE}@2025.9.2\"")),
        "{diff}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}
