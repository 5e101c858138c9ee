//! `testenv control-plane --kubeconfig <path>`: runs etcd + kube-apiserver on 127.0.0.1
//! until SIGINT or SIGTERM, for `make run` and for poking at the API by hand with kubectl.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use testenv::ControlPlane;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "Starts the real test components on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs etcd + kube-apiserver on 127.0.0.1 until SIGINT or SIGTERM.
    ControlPlane {
        /// Where to write the admin kubeconfig. It appears (atomically) once the apiserver
        /// is ready, and is removed again on exit, so its existence means "ready".
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Directory holding bin/etcd and bin/kube-apiserver
        /// [default: $TESTENV_DIR, else `testenv/build.sh --print-dir`].
        #[arg(long)]
        testenv_dir: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::ControlPlane {
            kubeconfig,
            testenv_dir,
        } => run_control_plane(&kubeconfig, testenv_dir).await,
    }
}

async fn run_control_plane(kubeconfig: &Path, testenv_dir: Option<PathBuf>) -> Result<()> {
    let testenv_dir = match testenv_dir {
        Some(dir) => dir,
        None => testenv::testenv_dir()?,
    };
    let control_plane = ControlPlane::start(&testenv_dir)?;
    publish_kubeconfig(control_plane.kubeconfig_path(), kubeconfig)?;
    let memory = control_plane.memory()?;
    println!(
        "control plane ready: {} in {:.1}s, kubeconfig {}, logs in {}, RSS etcd {:.0} MiB + \
         kube-apiserver {:.0} MiB",
        control_plane.server_url(),
        control_plane.startup_duration().as_secs_f64(),
        kubeconfig.display(),
        control_plane.dir().display(),
        memory.etcd_rss_kib as f64 / 1024.0,
        memory.apiserver_rss_kib as f64 / 1024.0,
    );

    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }

    // A kubeconfig pointing at a stopped server would only mislead whoever waits for it.
    let _ = std::fs::remove_file(kubeconfig);
    drop(control_plane); // kills kube-apiserver, then etcd, and removes the state directory
    println!("control plane stopped");
    Ok(())
}

/// Copies the kubeconfig to `target` through a rename, so readers never see half a file.
fn publish_kubeconfig(source: &Path, target: &Path) -> Result<()> {
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = target.with_extension(format!("partial-{}", std::process::id()));
    std::fs::copy(source, &partial)
        .with_context(|| format!("copying {} to {}", source.display(), partial.display()))?;
    std::fs::rename(&partial, target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))
}
