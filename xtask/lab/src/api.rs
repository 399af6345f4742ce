//! The seed article told through the EC2 API (issue 16, item 6), the lab's default: an etcd
//! store on the lab's LAN, `sg-agent api` on "my IP" (the administrator's workstation), and
//! each instance's agent a daemon following the store. The groups are made with the article's
//! aws CLI commands (their ids are the ones the API returns), every path is probed with real
//! clients, web-3 is launched into sg-web and reaches the database at once, and rules are
//! revoked under live SSH sessions: a tracked session survives (X1), an untracked one is cut
//! (X2).
//!
//! Owns the store, the API server and the daemons (dropped first, in that order); the hosts,
//! servers and probes are [`Ec2Lab`]'s.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sg_testkit::aws::ApiServer;
use sg_testkit::etcd::{EtcdCluster, EtcdOptions};
use sg_testkit::netns::Proc;

use crate::probe::{Both, Expect, Row, Svc, table};
use crate::scenario::{Ec2Lab, INSTANCES, LabOptions, NEW_WEB};
use crate::services as svc;
use crate::topology::Naming;

/// One `aws ec2 authorize-security-group-ingress` as the administrator types it (`aws` = the
/// project's aws CLI with `--endpoint-url` of the lab's API), with `{web}` and `{db}` standing
/// for the group ids the API returned.
pub struct AwsStep {
    pub why: &'static str,
    pub group: &'static str,
    /// Each one `--ip-permissions` value.
    pub permissions: &'static [&'static str],
}

/// The groups of the seed article, made the way the article makes them: sg-web's HTTPS rule
/// and sg-db's rule from sg-web are the article's commands verbatim but for the ids; the SSH
/// and ping rules are the ones its text describes (my IP only).
pub const BUILD: &[AwsStep] = &[
    AwsStep {
        why: "sg-web: the article's HTTPS rule",
        group: "{web}",
        permissions: &[
            r#"IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=0.0.0.0/0,Description="Public HTTPS"}],Ipv6Ranges=[{CidrIpv6=::/0,Description="Public HTTPS"}]"#,
        ],
    },
    AwsStep {
        why: "sg-web: SSH and ping from my IP only",
        group: "{web}",
        permissions: &[
            r#"IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=198.51.100.10/32,Description="SSH from my IP only"}],Ipv6Ranges=[{CidrIpv6=2001:db8:20::10/128,Description="SSH from my IP only"}]"#,
            r#"IpProtocol=icmp,FromPort=8,ToPort=-1,IpRanges=[{CidrIp=198.51.100.10/32,Description="Ping from my IP"}]"#,
            r#"IpProtocol=icmpv6,FromPort=128,ToPort=-1,Ipv6Ranges=[{CidrIpv6=2001:db8:20::10/128,Description="Ping from my IP"}]"#,
        ],
    },
    AwsStep {
        why: "sg-db: the article's group rule, MySQL from sg-web",
        group: "{db}",
        permissions: &[
            r#"IpProtocol=tcp,FromPort=3306,ToPort=3306,UserIdGroupPairs=[{GroupId={web},Description="Allow web tier to DB"}]"#,
        ],
    },
    AwsStep {
        why: "sg-db: ping from sg-web",
        group: "{db}",
        permissions: &[
            r#"IpProtocol=icmp,FromPort=8,ToPort=-1,UserIdGroupPairs=[{GroupId={web},Description="Ping from the web tier"}]"#,
            r#"IpProtocol=icmpv6,FromPort=128,ToPort=-1,UserIdGroupPairs=[{GroupId={web},Description="Ping from the web tier"}]"#,
        ],
    },
];

/// A check of the live part (sessions across a revoke): what EC2 does and what happened.
pub struct Live {
    pub what: String,
    pub expected: bool,
    pub got: bool,
}

/// A running API lab. Field order is drop order: daemons, the API, the store, then the hosts.
pub struct ApiLab {
    daemons: BTreeMap<String, Proc>,
    pub api: ApiServer,
    etcd: EtcdCluster,
    pub lab: Ec2Lab,
    /// The group ids the API returned.
    pub web: String,
    pub db: String,
    /// Every aws command run, as typed, with its output (for the lab's transcript).
    pub transcript: Vec<(String, String)>,
}

impl ApiLab {
    /// The hosts and servers (nothing applied), the store on the LAN, the API on my-ip.
    pub fn up(
        agent: &Path,
        naming: Naming,
        want_mariadb: bool,
        ingress_hook: Option<String>,
    ) -> Result<ApiLab> {
        let lab = Ec2Lab::up(LabOptions {
            agent: agent.to_path_buf(),
            // Never applied: the hosts and paths are the file-driven lab's.
            policy: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/ec2-lab.yaml"
            )),
            naming,
            want_mariadb,
            ingress_hook,
            apply: false,
        })?;
        let etcd = EtcdCluster::start_on(
            &lab.lan.switch,
            "br0",
            1,
            EtcdOptions {
                ready_timeout: Duration::from_secs(30),
                ..EtcdOptions::default()
            },
        )?;
        // The API runs on my-ip (198.51.100.10), on the same LAN: the member routes that range
        // on-link too (the test kit's members route only 192.0.2.0/24 and 203.0.113.0/24).
        etcd.member_ns(0)
            .ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"])?;
        let api = ApiServer::start(
            &lab.lan.host("my-ip").ns,
            &etcd.endpoints(),
            &lab.files.dir().join("api"),
            false,
        );
        Ok(ApiLab {
            daemons: BTreeMap::new(),
            api,
            etcd,
            lab,
            web: String::new(),
            db: String::new(),
            transcript: Vec::new(),
        })
    }

    pub fn store_url(&self) -> String {
        self.etcd.endpoints()
    }

    /// `aws ARGS` ({web}/{db} replaced by the ids), which must succeed: its JSON (Null when
    /// it prints nothing). Recorded in the transcript.
    pub fn aws(&mut self, args: &[&str]) -> Result<Value> {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{web}", &self.web).replace("{db}", &self.db))
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.api.aws(&argv);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let typed = format!("aws {}", shell_words(&args));
        if !out.status.success() {
            bail!(
                "{typed} failed: {}\n(api log: {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.api.log()
            );
        }
        self.transcript.push((typed, stdout.clone()));
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).with_context(|| format!("aws: not JSON: {stdout}"))
    }

    /// Creates sg-web and sg-db and their rules ([`BUILD`]). EC2 refuses group names of the
    /// form sg-*, so they are named web and db and carry the article's names as Name tags.
    pub fn build_groups(&mut self) -> Result<()> {
        for (name, group, desc) in [
            ("sg-web", "web", "Web tier"),
            ("sg-db", "db", "Database tier"),
        ] {
            let tags = format!("ResourceType=security-group,Tags=[{{Key=Name,Value={name}}}]");
            let v = self.aws(&[
                "ec2",
                "create-security-group",
                "--group-name",
                group,
                "--description",
                desc,
                "--tag-specifications",
                &tags,
            ])?;
            let id = v["GroupId"]
                .as_str()
                .context("create-security-group: no GroupId")?
                .to_string();
            if name == "sg-web" {
                self.web = id;
            } else {
                self.db = id;
            }
        }
        for step in BUILD {
            self.ingress("authorize", step.group, step.permissions)?;
        }
        Ok(())
    }

    /// `aws ec2 {authorize|revoke}-security-group-ingress --group-id G --ip-permissions P...`.
    pub fn ingress(&mut self, verb: &str, group: &str, permissions: &[&str]) -> Result<Value> {
        let action = format!("{verb}-security-group-ingress");
        let mut args = vec!["ec2", &action, "--group-id", group, "--ip-permissions"];
        args.extend_from_slice(permissions);
        self.aws(&args)
    }

    /// Launches an instance: its agent becomes a daemon on the store, registering eth0 with
    /// `group` (what `run-instances --security-group-ids` does on EC2).
    pub fn launch(&mut self, instance: &str, group: &str) -> Result<()> {
        let mut args = vec![
            "--store".to_string(),
            self.store_url(),
            "--host".into(),
            instance.into(),
            "--register".into(),
            format!("eth0={group}"),
            "--poll".into(),
            "1".into(),
        ];
        if let Some(h) = &self.lab.ingress_hook {
            args.extend(["--ingress-hook".into(), h.clone()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let ns = &self.lab.lan.host(instance).ns;
        let p = self.lab.agents.daemon(ns, &argv)?;
        self.daemons.insert(instance.to_string(), p);
        Ok(())
    }

    /// Launches the article's three instances into their groups.
    pub fn launch_instances(&mut self) -> Result<()> {
        for (inst, _, _) in INSTANCES {
            let g = if inst.starts_with("web") {
                self.web.clone()
            } else {
                self.db.clone()
            };
            self.launch(inst, &g)?;
        }
        Ok(())
    }

    /// Waits until every launched instance is alive in the store and enforces its current
    /// revision (`sg-agent store status`); the time it took.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let want = self.daemons.len();
        let mut last = String::new();
        while t0.elapsed() < timeout {
            for (name, p) in &mut self.daemons {
                p.check_running()
                    .with_context(|| format!("the agent of {name}"))?;
            }
            let url = self.store_url();
            let out = self.lab.agents.run(
                &self.lab.lan.host("my-ip").ns,
                &["--json", "store", "--store", &url, "status"],
            )?;
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).context("store status")?;
                let current = v["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|h| h["alive"] == true && h["current"] == true)
                    .count();
                if current == want {
                    return Ok(t0.elapsed());
                }
                last = format!("{current} of {want} hosts current at {}", v["revision"]);
            } else {
                last = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the instances did not converge within {timeout:?}: {last}")
    }

    /// Launches web-3 into sg-web (R1): denied before, then the time from its agent's start
    /// to its first TCP connection to db-1:3306, then the usual rows.
    pub fn scale_out(&mut self) -> Result<(Vec<Row>, String)> {
        let name = NEW_WEB.0;
        self.lab.add_web_host(NEW_WEB)?;
        let db = self.lab.db_svc();
        #[rustfmt::skip]
        let mut rows = self.lab.run(&table(&[
            (name, "db-1", Both, db.clone(), Expect::Deny, "R1 not yet in sg-web"),
        ]))?;
        let web = self.web.clone();
        let t0 = Instant::now();
        self.launch(name, &web)?;
        let to = SocketAddr::new(self.lab.lan.host("db-1").v4(), 3306);
        let first = self.lab.lan.host(name).ns.enter(|| {
            while t0.elapsed() < Duration::from_secs(30) {
                if TcpStream::connect_timeout(&to, Duration::from_millis(100)).is_ok() {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        })?;
        let Some(first) = first else {
            bail!("web-3 did not reach db-1:3306 within 30 s of its launch");
        };
        let converged = self.wait_converged(Duration::from_secs(30))?;
        #[rustfmt::skip]
        let probes = table(&[
            (name, "db-1", Both, db, Expect::Allow, "R1 joined sg-web"),
            (name, "db-1", Both, Svc::Ping, Expect::Allow, "R1 I3"),
            ("internet", name, Both, Svc::Https(443), Expect::Allow, "E5 sg-web's rules"),
        ]);
        rows.extend(self.lab.run(&probes)?);
        Ok((
            rows,
            format!(
                "    web-3's agent started -> its first connection to db-1:3306: {:.0} ms \
                 (web-3 loads its programs and registers; db-1 follows the store)\n    every \
                 instance enforcing the store's newest revision {:.0} ms after the launch",
                first.as_secs_f64() * 1e3,
                (first + converged).as_secs_f64() * 1e3
            ),
        ))
    }

    /// X1 and X2 live: an SSH session from my IP (a tracked flow) survives the revoke of the
    /// rule that admitted it while a new one is refused; an SSH session from the internet
    /// admitted by 0.0.0.0/0 with egress all (untracked, C4) is cut when that rule goes.
    pub fn revoke_under_live_sessions(&mut self) -> Result<Vec<Live>> {
        let mut live = Vec::new();
        let web1 = self.lab.lan.host("web-1").v4();
        let files = &self.lab.files;
        let mut tracked = svc::ssh_session(self.lab.lan.host("my-ip"), files, web1, 22)?;
        self.ingress(
            "authorize",
            "{web}",
            &[
                r#"IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=0.0.0.0/0,Description="SSH from anywhere (for a moment)"}]"#,
            ],
        )?;
        self.wait_converged(Duration::from_secs(30))?;
        let files = &self.lab.files;
        let mut untracked = svc::ssh_session(self.lab.lan.host("internet"), files, web1, 22)?;
        live.push(Live {
            what: "internet -> web-1 SSH session opens (0.0.0.0/0 + egress all: untracked, C4)"
                .into(),
            expected: true,
            got: untracked.round_trip("before", Duration::from_secs(5)),
        });
        self.ingress(
            "revoke",
            "{web}",
            &[
                r#"IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=198.51.100.10/32}],Ipv6Ranges=[{CidrIpv6=2001:db8:20::10/128}]"#,
                r#"IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=0.0.0.0/0}]"#,
            ],
        )?;
        self.wait_converged(Duration::from_secs(30))?;
        live.push(Live {
            what: "my-ip -> web-1 SSH session open across the revoke (X1: tracked, survives)"
                .into(),
            expected: true,
            got: tracked.round_trip("after", Duration::from_secs(5)),
        });
        live.push(Live {
            what: "internet -> web-1 SSH session open across the revoke (X2: untracked, cut)"
                .into(),
            expected: false,
            got: untracked.round_trip("after", Duration::from_secs(3)),
        });
        Ok(live)
    }

    /// The store's key layout after the run: the groups as `describe-security-groups` shows
    /// them, fed back to `sg-agent check` (the round trip of issue 16, item 5).
    pub fn describe_round_trip(&mut self) -> Result<String> {
        let v = self.aws(&["ec2", "describe-security-groups"])?;
        let path = self.lab.files.dir().join("describe-security-groups.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
        let p = path.display().to_string();
        let out = self
            .lab
            .agents
            .run(&self.lab.lan.host("my-ip").ns, &["check", &p])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "sg-agent check {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }
}

/// The lines of an aws answer a person reads: the new group's id, or each rule the call
/// made or revoked (id, protocol, ports, peer, description); anything else as printed.
pub fn brief(stdout: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(stdout) else {
        return stdout.lines().map(str::to_string).collect();
    };
    let rules = ["SecurityGroupRules", "RevokedSecurityGroupRules"]
        .iter()
        .find_map(|k| v[*k].as_array());
    if let Some(rules) = rules {
        return rules
            .iter()
            .map(|r| {
                let peer = ["CidrIpv4", "CidrIpv6", "PrefixListId"]
                    .iter()
                    .find_map(|k| r[*k].as_str())
                    .or_else(|| r["ReferencedGroupInfo"]["GroupId"].as_str())
                    .unwrap_or("?");
                format!(
                    "{}  {} {}..{} from {}  {:?}",
                    r["SecurityGroupRuleId"].as_str().unwrap_or("?"),
                    r["IpProtocol"].as_str().unwrap_or("?"),
                    r["FromPort"],
                    r["ToPort"],
                    peer,
                    r["Description"].as_str().unwrap_or("")
                )
            })
            .collect();
    }
    if let Some(id) = v["GroupId"].as_str() {
        return vec![format!("GroupId: {id}")];
    }
    serde_json::to_string(&v)
        .map(|s| vec![s])
        .unwrap_or_default()
}

/// Arguments as a shell would need them typed (single quotes where needed).
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c))
            {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
