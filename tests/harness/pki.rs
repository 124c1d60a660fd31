//! Throwaway certificates for TLS tests, made by the `openssl` command line:
//! a CA (`ca.pem`/`ca.key`), a server certificate for `127.0.0.1` and
//! `localhost` (`server.pem`/`server.key`), a client certificate from that CA
//! (`client.pem`/`client.key`) and one from another CA (`rogue.pem`/`rogue.key`,
//! issued by `rogue-ca.pem`). EC P-256 keys, valid for two days.
//!
//! It does not install openssl (`.ci/run` does when it is missing).

use std::path::PathBuf;
use std::process::Command;

/// The certificates of one test, in their own folder.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA, the listener's certificate (127.0.0.1, localhost), a client
    /// certificate from that CA, and one from another CA.
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for ca in ["ca", "rogue-ca"] {
            // a self-signed CA certificate: `req -x509`
            pki.new_key(ca, &format!("Junction test {ca}"), &["-x509", "-days", "2"]);
        }
        pki.issue(
            "ca",
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.issue(
            "ca",
            "client",
            "lab-sender",
            "extendedKeyUsage=clientAuth\n",
        );
        pki.issue(
            "rogue-ca",
            "rogue",
            "lab-sender",
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    /// `name.key` and `name.pem`, issued by `ca`.
    fn issue(&self, ca: &str, name: &str, cn: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.path(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}"),
        )
        .expect("write extensions");
        self.new_key(name, cn, &[]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.req"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "0x1d2e3f",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// `name.key` (EC P-256) and `name.req`: a request for `/CN=cn`, or
    /// with `-x509` in `extra` a self-signed certificate.
    fn new_key(&self, name: &str, cn: &str, extra: &[&str]) {
        let (key, out, subject) = (
            format!("{name}.key"),
            format!("{name}.req"),
            format!("/CN={cn}"),
        );
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ];
        args.extend(["-nodes", "-keyout", &key, "-out", &out, "-subj", &subject]);
        args.extend(extra);
        self.openssl(&args);
        if extra.contains(&"-x509") {
            std::fs::rename(self.path(&out), self.path(&format!("{name}.pem")))
                .expect("name the CA certificate");
        }
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl (the test makes its certificates with it)");
        assert!(
            output.status.success(),
            "openssl {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
