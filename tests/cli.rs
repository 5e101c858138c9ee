//! The binary as a user runs it, outside any cluster.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Text logs written to a file or a pipe carry no ANSI colour codes (colour is for terminals).
#[test]
fn text_logs_on_a_pipe_have_no_colour_codes() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("oauth-operator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A cluster that cannot be reached (nothing listens on port 1): the operator starts,
    // logs, and keeps retrying.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]
current-context: x
"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oauth-operator"))
        .args(["run", "--log-format", "text", "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        stderr.contains("serving /metrics"),
        "the operator logged its start: {stderr:?}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI escape codes on a pipe: {stderr:?}"
    );
}
