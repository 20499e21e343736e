//! Throwaway certificates for the TLS tests, made with the `openssl` command:
//! a CA, a second CA that signed nothing the servers use, a server
//! certificate for `127.0.0.1` and `localhost`, and a client certificate,
//! all EC P-256 and valid for two days.

use std::path::Path;
use std::process::{Command, Stdio};

const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").current_dir(dir).args(args).stderr(Stdio::null()).status();
    assert!(matches!(status, Ok(s) if s.success()), "openssl {args:?} failed: {status:?}");
}

/// Signs `{name}.pem` (with key `{name}.key`) by `ca.pem`, with the given
/// extensions.
fn signed(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let (key, csr, cert, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    let mut request = vec!["req"];
    request.extend(EC_KEY);
    request.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(dir, &request);
    std::fs::write(dir.join(&ext), extensions).unwrap_or_else(|e| panic!("cannot write {ext}: {e}"));
    openssl(
        dir,
        &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &cert]
            .into_iter()
            .chain(["-days", "2", "-extfile", &ext])
            .collect::<Vec<_>>(),
    );
}

/// Writes into `dir`: `ca.pem`/`ca.key`, `other-ca.pem`/`other-ca.key`,
/// `server.pem`/`server.key` (signed by `ca`, for 127.0.0.1 and localhost)
/// and `client.pem`/`client.key` (signed by `ca`, CN `root`).
///
/// # Panics
/// When `openssl` is missing or fails.
pub fn make_test_pki(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        let mut args = vec!["req", "-x509"];
        args.extend(EC_KEY);
        let (key, cert, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=distlock test {ca}"));
        args.extend(["-keyout", &key, "-out", &cert, "-days", "2", "-subj", &subject]);
        openssl(dir, &args);
    }
    signed(
        dir,
        "server",
        "/CN=server.dc1.consul",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:server.dc1.consul\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    signed(dir, "client", "/CN=root", "extendedKeyUsage=clientAuth\n");
}
