//! Child processes that never outlive the test binary, free loopback ports, paths.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result, bail};

/// The repository root (this crate lives in `testenv/harness`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("testenv/harness is inside the workspace") // invariant of the repo layout
}

/// Directory holding the built components: `bin/`, `keycloak/`, ...
/// `$TESTENV_DIR` when set (the Makefile sets it), else what `testenv/build.sh --print-dir` says.
pub fn testenv_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TESTENV_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let script = workspace_root().join("testenv/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .output()
        .with_context(|| format!("running {} --print-dir", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} --print-dir failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `N` distinct free ports: two calls of [`free_port`] may return the same port, since each
/// releases it before returning.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut ports = [0u16; N];
    let mut found = 0;
    while found < N {
        let port = free_port()?;
        if !ports[..found].contains(&port) {
            ports[found] = port;
            found += 1;
        }
    }
    Ok(ports)
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is killed when dropped and, through `PR_SET_PDEATHSIG`, when the
/// test process dies for any reason (panic, abort, SIGKILL), so no server outlives the tests.
pub struct GuardedChild {
    child: Child,
    name: String,
}

impl GuardedChild {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = spawn_on_reaper_thread(cmd).with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails if the process has already exited (used while waiting for readiness).
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early with {status}", self.name),
            None => Ok(()),
        }
    }

    /// The exit status once the process has exited (`None` while it runs).
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GuardedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Tests run on short-lived threads (one tokio runtime per test), so every child is forked
/// from one thread that lives as long as the process.
fn spawn_on_reaper_thread(cmd: Command) -> Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static REAPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
                // The sender lives in a static, so this loop never ends while the process runs.
            })
            .expect("spawning the testenv spawner thread"); // invariant: thread creation succeeds
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .lock()
        .map_err(|_| anyhow::anyhow!("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .context("spawner thread gone")?;
    Ok(reply_rx.recv().context("spawner thread gone")??)
}

fn spawn_with_parent_death_signal(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}
