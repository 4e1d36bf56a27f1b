//! Child processes of the bench (switchyard itself, the bare handler), their
//! memory and CPU as Linux reports them, and the scratch directory.

use anyhow::{anyhow, bail, Context};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running child; killed (and reaped) when dropped.
pub struct Child {
    name: String,
    child: std::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Held open: the bare server exits when it closes.
    _stdin: Option<std::process::ChildStdin>,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Child {
    /// Starts `cmd`, its stderr going to `log`, and waits (at most `timeout`)
    /// for a stdout line `… listening on http://ADDR`.
    pub async fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Child> {
        // The previous child's dirty pages are written back first: left in
        // the page cache, their writeback queued ahead of this child's WAL
        // syncs and cut its throughput by a tenth or more.
        let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                let mut tx = Some(tx);
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, addr)) = line.split_once("listening on http://") {
                        if let (Some(tx), Ok(addr)) = (tx.take(), addr.trim().parse()) {
                            let _ = tx.send(addr);
                        }
                    }
                }
            })?;
        let mut guard = Child {
            name: name.to_string(),
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
            _stdin: stdin,
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(addr)) => {
                guard.addr = addr;
                Ok(guard)
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let status = guard.child.try_wait().ok().flatten();
                bail!(
                    "the {name} exited before listening ({}); its log:\n{}",
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "still running".into()),
                    tail(log, 20)
                )
            }
            Err(_) => bail!(
                "the {name} did not report its address within {timeout:?}; its log:\n{}",
                tail(log, 20)
            ),
        }
    }

    /// Asks the child to stop (SIGTERM), waits up to `grace`, then kills it.
    pub async fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "bench: the {} had not exited {grace:?} after SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Kills the child at once (SIGKILL) and reaps it: for a server whose
    /// delivery backlog is of no further interest (its data is scratch).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails, with the exit status and the end of the log, if the child died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!(
                "the {} (pid {}) died during the run: {status}; the end of its log:\n{}",
                self.name,
                self.pid,
                tail(&self.log, 30)
            ),
            _ => Ok(()),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    pub fn memory(&self) -> Memory {
        memory(self.pid)
    }

    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident memory, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: now.
    pub rss: u64,
    /// `VmHWM`: the peak so far.
    pub hwm: u64,
}

pub fn memory(pid: u32) -> Memory {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

/// User + system CPU time of a process, seconds (Linux's USER_HZ is 100).
pub fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at `state`.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// User + system CPU seconds of each thread of a process, summed by thread
/// name (Linux truncates names to 15 bytes: `function-worker`, `tokio-runtime-w`).
pub fn thread_cpu_secs(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            continue;
        };
        let name = text[open + 1..close].to_string();
        let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        *out.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) as f64 / 100.0;
    }
    out
}

/// CPU time of the whole machine, seconds (all CPUs): (busy, total).
pub fn machine_cpu_secs() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    ((total - idle) as f64 / 100.0, total as f64 / 100.0)
}

/// A scratch directory, removed on drop unless kept.
pub struct ScratchDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl ScratchDir {
    pub fn new(keep: bool) -> anyhow::Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!(
            "switchyard-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path, keep })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
