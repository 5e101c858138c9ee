//! `scripts/leak-scan.sh`, which `make test` runs after every test binary, finds a secret
//! value in an operator log (without printing it) and passes a clean run.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

fn scan(tmp: &Path) -> Result<(bool, String)> {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/leak-scan.sh"))
        .arg(tmp)
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn the_leak_scan_finds_a_secret_in_an_operator_log_and_passes_a_clean_one() -> Result<()> {
    let root =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("leak-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let seen = root.join("oauth-operator-secrets-seen");
    let logs = root.join("oauth-operator-tests-x");
    std::fs::create_dir_all(&seen)?;
    std::fs::create_dir_all(&logs)?;
    let value = "s3cr3t-value-0123456789abcdef";
    std::fs::write(seen.join("1.txt"), format!("{value}\nshort\n"))?;
    std::fs::write(
        logs.join("operator-1.log"),
        "{\"msg\":\"registered client oa_1\"}\n{\"msg\":\"Secret web-oauth updated\"}\n",
    )?;
    let (ok, output) = scan(&root)?;
    assert!(ok, "a clean log passes: {output}");
    assert!(output.contains("0 leaking lines"), "{output}");

    std::fs::write(
        logs.join("operator-2.log"),
        format!("{{\"msg\":\"calling with {value}\"}}\n{{\"msg\":\"fine\"}}\n"),
    )?;
    let (ok, output) = scan(&root)?;
    assert!(!ok, "a log with a secret value fails the scan");
    assert!(
        output.contains("operator-2.log"),
        "it names the file: {output}"
    );
    assert!(!output.contains(value), "it never prints the value");
    // A short value ("short") is not scanned for: it would match ordinary words.
    std::fs::write(logs.join("operator-2.log"), "{\"msg\":\"a short note\"}\n")?;
    assert!(scan(&root)?.0, "short values are not scanned for");
    // What the operator published beside its logs: its metrics page, and statuses and events
    // as the apiserver holds them.
    for (file, text) in [
        (
            "metrics-1.txt",
            format!("oauth_operator_x{{client=\"{value}\"}} 1\n"),
        ),
        (
            "objects-1.yaml",
            format!("status:\n  conditions:\n  - message: got {value}\n"),
        ),
    ] {
        std::fs::write(logs.join(file), &text)?;
        let (ok, output) = scan(&root)?;
        assert!(!ok && output.contains(file), "{file}: {output}");
        assert!(!output.contains(value), "it never prints the value");
        std::fs::write(logs.join(file), "clean\n")?;
    }
    let (ok, output) = scan(&root)?;
    assert!(
        ok && output.contains("1 metrics pages, 1 status and event captures"),
        "{output}"
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
