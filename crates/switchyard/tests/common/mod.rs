//! Test harness: the real `switchyard` binary and a real webhook receiver
//! (Node.js, verifying signatures like Segment's sample code), on loopback.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A unique scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-test-{name}-{}-{n}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP client for tests (installs the TLS provider first).
pub fn http_client() -> reqwest::Client {
    delivery::install_crypto_provider();
    reqwest::Client::new()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Spawns a child and waits for a stdout line starting with `prefix`;
/// the rest of its stdout keeps being drained. Returns the line's remainder.
fn spawn_and_wait(
    mut cmd: Command,
    prefix: &str,
    what: &str,
) -> (Child, String, mpsc::Receiver<String>) {
    cmd.stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining.
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return (child, rest.trim().to_string(), rx);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait();
                panic!("{what} exited before printing {prefix:?}: {status:?}");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("{what} did not print {prefix:?} within 30 s");
            }
        }
    }
}

/// The Node.js webhook receiver.
pub struct Receiver {
    child: Child,
    pub base: String,
    /// The HTTPS base of webhooks when started with a certificate.
    pub tls_base: Option<String>,
    http: reqwest::Client,
}

impl Receiver {
    pub fn start(secret: &str) -> Receiver {
        Self::start_with(secret, &[])
    }

    /// Starts the receiver with extra environment (e.g. `RECEIVER_TLS_CERT`).
    pub fn start_with(secret: &str, env: &[(&str, &str)]) -> Receiver {
        let http = http_client();
        let mut cmd = Command::new("node");
        cmd.arg(repo_root().join("tests/support/receiver.js"))
            .env("RECEIVER_SECRET", secret)
            .env("RECEIVER_EXIT_WITH_STDIN", "1")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::piped())
            .stderr(Stdio::inherit());
        let (child, ports, _rx) = spawn_and_wait(cmd, "PORT ", "the receiver (node)");
        let mut words = ports.split_whitespace();
        let port = words.next().unwrap_or_default().to_string();
        let tls_port = words.nth(1).map(str::to_string);
        Receiver {
            child,
            tls_base: tls_port.map(|p| format!("https://localhost:{p}")),
            base: format!("http://127.0.0.1:{port}"),
            http,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/hook/{name}", self.base)
    }

    /// Sets how `/hook/<name>` answers: `{"status": 500, "times": 2}` etc.
    pub async fn control(&self, name: &str, behaviour: Value) {
        self.http
            .post(format!("{}/_control/{name}", self.base))
            .body(behaviour.to_string())
            .send()
            .await
            .expect("control the receiver");
    }

    pub async fn received(&self, name: &str) -> Vec<Value> {
        let text = self
            .http
            .get(format!("{}/_received/{name}", self.base))
            .send()
            .await
            .expect("query the receiver")
            .text()
            .await
            .expect("receiver answer");
        serde_json::from_str(&text).expect("receiver JSON")
    }

    /// Waits until `pred` holds for the requests of `name` (or panics after `secs`).
    pub async fn wait_until(
        &self,
        name: &str,
        secs: u64,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received(name).await;
            if pred(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "receiver {name}: condition not met within {secs} s; got {} requests: {:#?}",
                    got.len(),
                    got.iter()
                        .map(|r| (&r["status"], &r["raw"]))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for `n` requests answered 2xx.
    pub async fn wait_delivered(&self, name: &str, n: usize, secs: u64) -> Vec<Value> {
        let got = self
            .wait_until(name, secs, |r| delivered(r).len() >= n)
            .await;
        delivered(&got)
    }
}

/// The requests of a receiver's log that were answered 2xx.
pub fn delivered(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| {
            r["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
        })
        .cloned()
        .collect()
}

/// The parsed body of a recorded request.
pub fn body(record: &Value) -> Value {
    serde_json::from_str(record["raw"].as_str().unwrap_or("null")).expect("JSON body")
}

/// The `messageId` of a recorded request's body ("" when it has none).
pub fn message_id(record: &Value) -> String {
    body(record)["messageId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A switchyard server process.
pub struct Switchyard {
    child: Option<Child>,
    pub base: String,
    pub addr: String,
    pub dir: TempDir,
    pub stdout: Vec<String>,
    http: reqwest::Client,
    launch: Launch,
}

/// How a test starts switchyard beyond its configuration file.
#[derive(Default, Clone)]
pub struct Launch {
    /// The soft limit of open files (`ulimit -Sn`) it starts with, if set.
    pub open_files: Option<u32>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Switchyard {
    /// Starts switchyard with `config` (TOML) on a random loopback port.
    pub fn start(config: &str) -> Switchyard {
        Self::start_with(config, Launch::default())
    }

    /// Starts switchyard as [`Switchyard::start`] does, the way `launch` says.
    pub fn start_with(config: &str, launch: Launch) -> Switchyard {
        let http = http_client();
        let dir = TempDir::new("server");
        std::fs::write(dir.0.join("switchyard.toml"), config).expect("write config");
        let mut s = Switchyard {
            child: None,
            base: String::new(),
            addr: "127.0.0.1:0".into(),
            dir,
            stdout: Vec::new(),
            http,
            launch,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("server.log"))
            .expect("server log");
        let mut cmd = match self.launch.open_files {
            None => Command::new(env!("CARGO_BIN_EXE_switchyard")),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_switchyard"));
                sh
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.0.join("switchyard.toml"))
            .arg("--data-dir")
            .arg(self.dir.0.join("data"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--admin-token")
            .arg(ADMIN_TOKEN)
            .env("SWITCHYARD_LOG", "info,switchyard_delivery=debug")
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::from(log));
        let (child, url, rx) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            spawn_and_wait(cmd, "switchyard: listening on ", "switchyard")
        }))
        .unwrap_or_else(|_| panic!("switchyard did not start; its log:\n{}", self.log()));
        self.stdout = rx.try_iter().collect();
        self.base = url.clone();
        self.addr = url.trim_start_matches("http://").to_string();
        self.child = Some(child);
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        // Connections kept alive to the process killed are dead: a new
        // client does not try them first.
        self.http = http_client();
        self.spawn();
    }

    /// Sends `count` track events of source `web` in one `/v1/batch`, with
    /// messageIds `{prefix}0`, `{prefix}1`, …; asserts the 200.
    pub async fn send_tracks(&self, count: usize, prefix: &str) {
        let batch: Vec<Value> = (0..count)
            .map(|i| {
                serde_json::json!({"type": "track", "userId": "u", "event": "E", "messageId": format!("{prefix}{i}")})
            })
            .collect();
        let (s, b) = self
            .post(
                "/v1/batch",
                "wk_web",
                &serde_json::json!({ "batch": batch }).to_string(),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// POSTs `body` with HTTP Basic auth `write_key:`; returns status and JSON.
    pub async fn post(&self, path: &str, write_key: &str, body: &str) -> (u16, Value) {
        self.post_with(path, Some(write_key), body.as_bytes().to_vec(), &[])
            .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        write_key: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = write_key {
            req = req.basic_auth(k, Some(""));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("POST to switchyard");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- switchyard log ----\n{}", self.log());
        }
        self.kill9();
    }
}

/// A Webhooks destination `hook` for source `web`, signing with `secret`
/// and retrying fast.
pub fn signed_hook(url: &str, secret: &str) -> String {
    format!(
        "[[destinations]]\nname = \"hook\"\nkind = \"webhooks\"\nsources = [\"web\"]\nurls = [\"{url}\"]\nshared_secret = \"{secret}\"\nretry_initial_ms = 100\nretry_max_delay = \"2s\"\n"
    )
}

/// The run tag a test's client put in a message (in its properties, traits
/// or context).
pub fn run_tag(event: &Value) -> Option<&str> {
    ["properties", "traits", "context"]
        .iter()
        .find_map(|k| event[*k]["run_id"].as_str())
}

/// A minimal configuration: source `web` (key `wk_web`) and the given destinations.
pub fn config_with(destinations: &str) -> String {
    format!(
        "[[sources]]\nslug = \"web\"\nkind = \"tracking\"\nwrite_key = \"wk_web\"\n\n{destinations}"
    )
}

/// A raw HTTP/1.1 `POST` of the JSON `body` to `path` on `host`, with the
/// `web` source's write key (`wk_web`).
pub fn raw_post(host: &str, path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic d2tfd2ViOg==\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends the raw HTTP `request` to `addr`, waits `after`, and hangs up
/// without reading the answer (the connection is reset).
pub async fn send_and_hang_up(addr: &str, request: &str, after: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(after).await;
    // A reset, not a half-close: the server cannot tell that this client
    // stopped waiting until it writes the answer.
    stream.set_zero_linger().expect("SO_LINGER");
    drop(stream);
}

/// The value of `name{source="web"}` in the Prometheus text (0 when absent).
pub fn web_counter(metrics: &str, name: &str) -> u64 {
    let prefix = format!("{name}{{source=\"web\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0, |value| value.trim().parse().expect("a counter value"))
}
