//! Shared plumbing for the authorization servers (oidc-provider, Keycloak, Ory Hydra):
//! readiness polling, log files, per-run directories, memory measurement, HTTP clients.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::process::{GuardedChild, workspace_root};

/// A reqwest client for one test's tokio runtime (never keep it in a `static`: it is bound to
/// the runtime it was first used in). Installs the ring rustls provider on first use.
pub fn http_client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

/// Directory for server logs: `$CARGO_TARGET_DIR/testenv-logs` (default `<workspace>/target`).
pub fn log_dir() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = target.join("testenv-logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A fresh log file path `<log_dir>/<name>-<pid>-<n>.log`, unique within this machine.
pub fn new_log_path(name: &str) -> Result<PathBuf> {
    Ok(log_dir()?.join(format!("{name}-{}.log", unique_suffix())))
}

/// `<pid>-<n>`: unique among the processes currently running on this machine.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Random hex string from the kernel's CSPRNG (`2 * bytes` characters).
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Status code of `GET http://127.0.0.1:<port><path>` over plain HTTP/1.1, without an async
/// runtime, so it works from sync code and from inside any test's runtime alike.
pub fn http_get_status(port: u16, path: &str, timeout: Duration) -> Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    // "HTTP/1.1 200 OK"
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status line from 127.0.0.1:{port}: {line:?}"))
}

/// Polls until every `(port, path)` answers 200, the process dies, or `timeout` passes.
/// Errors carry the tail of the server's log.
pub fn wait_ready(
    child: &mut GuardedChild,
    log: &Path,
    probes: &[(u16, &str)],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(u16, &str)> = probes.to_vec();
    let mut last = String::from("not probed yet");
    loop {
        if let Err(e) = child.check_running() {
            bail!(
                "{e:#}\n--- last lines of {} ---\n{}",
                log.display(),
                log_tail(log, 40)
            );
        }
        pending.retain(|&(port, path)| {
            match http_get_status(port, path, Duration::from_secs(10)) {
                Ok(200) => false,
                Ok(code) => {
                    last = format!("GET 127.0.0.1:{port}{path} -> {code}");
                    true
                }
                Err(e) => {
                    last = format!("GET 127.0.0.1:{port}{path}: {e:#}");
                    true
                }
            }
        });
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready after {timeout:?} (last probe: {last})\n--- last lines of {} ---\n{}",
                child.name(),
                log.display(),
                log_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident memory (VmRSS, KiB) of `pid` and all its descendants.
pub fn process_tree_rss_kib(pid: u32) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += vm_rss_kib(p).with_context(|| format!("reading VmRSS of pid {p}"))?;
        stack.extend(children_of(p));
    }
    Ok(total)
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn children_of(pid: u32) -> Vec<u32> {
    // /proc/<pid>/task/<tid>/children lists the children of each thread.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// A per-run scratch directory `$TMPDIR/oauth-operator-testenv/<name>-<pid>-<n>`, removed on
/// drop. Directories left behind by dead test processes (shared servers live in statics, which
/// are never dropped) are swept when a new one is created.
pub struct RunDir {
    path: PathBuf,
}

/// Run directories not dropped yet: those of shared servers (statics are never dropped) are
/// removed when the test process exits, so a run leaves nothing in /tmp.
static LIVE_RUN_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn remove_live_run_dirs_at_exit() {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_live_run_dirs() {
        // try_lock: never block an exiting process on a lock some thread held when it died.
        if let Ok(dirs) = LIVE_RUN_DIRS.try_lock() {
            for dir in dirs.iter() {
                let _ = std::fs::remove_dir_all(dir);
                if let Some(root) = dir.parent() {
                    let _ = std::fs::remove_dir(root); // only when empty
                }
            }
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: atexit only records a function pointer; the handler touches a static and
        // the file system, and neither blocks nor panics.
        unsafe {
            libc::atexit(remove_live_run_dirs);
        }
    });
}

impl RunDir {
    pub fn new(name: &str) -> Result<Self> {
        let root = std::env::temp_dir().join("oauth-operator-testenv");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        sweep_stale(&root);
        let path = root.join(format!("{name}-{}", unique_suffix()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        remove_live_run_dirs_at_exit();
        LIVE_RUN_DIRS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.clone());
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        LIVE_RUN_DIRS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d| d != &self.path);
        if let Some(root) = self.path.parent() {
            let _ = std::fs::remove_dir(root); // only when empty
        }
    }
}

/// Removes `<name>-<pid>-<n>` entries whose pid is no longer running.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Figures measured once a server is ready.
#[derive(Debug, Clone, Copy)]
pub struct StartupStats {
    /// From spawning the process until every readiness probe answered 200.
    pub startup: Duration,
    /// VmRSS of the process tree right after readiness, KiB.
    pub rss_kib: u64,
}

impl StartupStats {
    pub fn measure(started: Instant, pid: u32) -> Self {
        Self {
            startup: started.elapsed(),
            rss_kib: process_tree_rss_kib(pid).unwrap_or(0),
        }
    }
}

impl std::fmt::Display for StartupStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ready in {:.1} s, RSS {:.0} MiB at readiness",
            self.startup.as_secs_f64(),
            self.rss_kib as f64 / 1024.0
        )
    }
}

/// Stores the outcome of a one-time start in a `static` (`OnceLock<Result<T, String>>`) and
/// hands out `&'static T`, repeating the original error on every later call.
pub fn shared_or_err<T>(
    cell: &'static std::sync::OnceLock<std::result::Result<T, String>>,
    what: &str,
    start: impl FnOnce() -> Result<T>,
) -> Result<&'static T> {
    cell.get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("shared {what} failed to start: {e}"))
}
