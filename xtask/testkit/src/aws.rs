//! The real EC2 clients of the API tests (api_*.rs): the aws CLI and boto3 from the
//! project's virtual environment (`cargo xtask bootstrap` installs them under
//! target/aws-venv), and an `sg-agent api` process they talk to, run in a namespace that
//! reaches the test's etcd (or beside a daemon's policy file: the local store). Every command has a timeout; dropping an [`ApiServer`] kills it.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent_harness::{Bg, run_bounded, text};
use crate::fleet::Fleet;
use crate::netns::Netns;

/// How long one client command may take (the CLI starts Python each time).
const CLIENT: Duration = Duration::from_secs(60);

/// The access key the tests sign with (the credentials file holds it).
pub const KEY_ID: &str = "AKIASGAPITEST0000001";
pub const SECRET: &str = "sg-api-test-secret/0123456789abcdefABCDEF";

/// The seed article's group rule, as its `--ip-permissions` argument: sg-web -> sg-db on
/// MySQL's port.
pub const ARTICLE_DB_PERMISSION: &str = r#"IpProtocol=tcp,FromPort=3306,ToPort=3306,UserIdGroupPairs=[{GroupId=sg-web,Description="Allow web tier to DB"}]"#;

/// The virtual environment of the aws CLI and boto3; panics with the remedy when missing.
pub fn venv() -> PathBuf {
    let v = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/aws-venv");
    assert!(
        v.join("bin/aws").exists() && v.join("bin/python3").exists(),
        "the aws CLI and boto3 are missing at {}; hint: cargo xtask bootstrap",
        v.display()
    );
    v
}

/// The API tests' starting point: a one-member store holding `policy` (`sg-agent store
/// import`) and an API server on it, requiring signed requests (`auth`) or not.
pub fn api_on_store(policy: &str, auth: bool) -> (Fleet, ApiServer) {
    let f = Fleet::new(1, &[]);
    f.import(&f.write("policy.yaml", policy));
    let api = ApiServer::on_fleet(&f, "api", auth);
    (f, api)
}

/// `sg-agent api` running in a namespace, and how to call it.
pub struct ApiServer {
    _proc: Bg,
    ns: String,
    /// `http://127.0.0.1:PORT` (inside the namespace).
    pub url: String,
    /// The credentials file, the clients' HOME and the server's log.
    pub dir: PathBuf,
}

impl ApiServer {
    /// Starts `sg-agent api --store ENDPOINTS` in `ns` on a free port of its loopback, with the
    /// test key in a root-only credentials file (`auth`) or `--no-auth`.
    pub fn start(ns: &Netns, endpoints: &str, dir: &Path, auth: bool) -> ApiServer {
        ApiServer::start_on(ns, &["--store", endpoints], dir, auth)
    }

    /// [`ApiServer::start`] on the fleet's store, in its first member's namespace, with its
    /// files in the fleet's directory `name`.
    pub fn on_fleet(f: &Fleet, name: &str, auth: bool) -> ApiServer {
        ApiServer::start(
            f.etcd.member_ns(0),
            &f.etcd.endpoints(),
            &f.dir.join(name),
            auth,
        )
    }

    /// [`ApiServer::start`] on the store `store_args` name: `--store URL`, or `--config FILE`
    /// for the local store (a policy file, no etcd).
    pub fn start_on(ns: &Netns, store_args: &[&str], dir: &Path, auth: bool) -> ApiServer {
        std::fs::create_dir_all(dir).unwrap();
        let creds = dir.join("api-keys");
        std::fs::write(&creds, format!("# test key\n{KEY_ID} = {SECRET}\n")).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = dir.join("api.log");
        let mut c = ns.cmd(crate::agent_bin());
        c.arg("api")
            .args(store_args)
            .args(["--listen", "127.0.0.1:0"]);
        if auth {
            c.arg("--credentials").arg(&creds);
        } else {
            c.arg("--no-auth");
        }
        c.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let mut child = c.spawn().expect("spawn sg-agent api");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let _ = out.read_line(&mut line);
        let proc = Bg {
            child,
            what: "sg-agent api".into(),
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| {
                panic!(
                    "sg-agent api did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        ApiServer {
            _proc: proc,
            ns: ns.name().to_string(),
            url,
            dir: dir.to_path_buf(),
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("api.log")).unwrap_or_default()
    }

    /// A client command in the server's namespace with the test's region and `secret`,
    /// nothing from this host's own AWS configuration.
    fn client(&self, program: &Path, secret: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c.env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", self.dir.join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_RETRY_MODE", "standard")
            .env("AWS_MAX_ATTEMPTS", "2")
            .env("AWS_ENDPOINT_URL", &self.url)
            .env("HOME", &self.dir)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        c
    }

    /// `aws ARGS --endpoint-url URL --output json`, signed with `secret`.
    pub fn aws_signed(&self, secret: &str, args: &[&str]) -> Output {
        // Through the venv's python rather than the script's `#!` line, which names the
        // path the venv was created at (a moved or shared target dir breaks it).
        let mut c = self.client(&venv().join("bin/python3"), secret);
        c.arg(venv().join("bin/aws")).args(args).args([
            "--endpoint-url",
            &self.url,
            "--output",
            "json",
        ]);
        run_bounded(c, CLIENT)
    }

    pub fn aws(&self, args: &[&str]) -> Output {
        self.aws_signed(SECRET, args)
    }

    /// `aws ARGS`, which must succeed: its JSON output (Null when it prints nothing).
    pub fn aws_ok(&self, args: &[&str]) -> Value {
        let o = self.aws(args);
        assert!(
            o.status.success(),
            "aws {args:?}:\n{}\napi log:\n{}",
            text(&o),
            self.log()
        );
        if o.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("aws {args:?}: not JSON ({e}):\n{}", text(&o)))
    }

    /// `aws ec2 authorize-security-group-ingress --group-id GROUP --ip-permissions
    /// PERMISSIONS...` (the shorthand syntax), which must succeed: its JSON output.
    pub fn authorize_ingress(&self, group: &str, permissions: &[&str]) -> Value {
        let mut args = vec![
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            group,
            "--ip-permissions",
        ];
        args.extend(permissions);
        self.aws_ok(&args)
    }

    /// `aws ARGS`, which must fail with EC2 error `code`; the error message.
    pub fn aws_err(&self, args: &[&str], code: &str) -> String {
        let o = self.aws(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !o.status.success() && err.contains(&format!("({code})")),
            "aws {args:?} should fail with {code}:\n{}",
            text(&o)
        );
        err
    }

    /// A Python script with boto3 (`ec2 = boto3.client("ec2")` is ready, pointed at the
    /// API, and `ec2_raw`, the same without boto3's own parameter checks, to reach the
    /// server's; `code(f, **kw)` is "ok" or the EC2 error code of the call); its JSON on
    /// stdout.
    pub fn boto3(&self, script: &str) -> Value {
        let path = self.dir.join("script.py");
        let prelude = "import json, boto3, botocore, botocore.config\n\
                       ec2 = boto3.client('ec2')\n\
                       sts = boto3.client('sts')\n\
                       ec2_raw = boto3.client('ec2', config=botocore.config.Config(\
                       parameter_validation=False))\n\
                       def code(f, **kw):\n\
                       \x20   try:\n\
                       \x20       f(**kw)\n\
                       \x20       return 'ok'\n\
                       \x20   except botocore.exceptions.ClientError as e:\n\
                       \x20       return e.response['Error']['Code']\n";
        std::fs::write(&path, format!("{prelude}{script}")).unwrap();
        let mut c = self.client(&venv().join("bin/python3"), SECRET);
        c.arg(&path);
        let o = run_bounded(c, CLIENT);
        assert!(
            o.status.success(),
            "boto3 script:\n{script}\n{}\napi log:\n{}",
            text(&o),
            self.log()
        );
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("boto3 script: not JSON ({e}):\n{}", text(&o)))
    }
}
