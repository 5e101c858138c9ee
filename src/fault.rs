//! Crash points for the end-to-end tests. Compiled in only with the `fault-injection` cargo
//! feature, so a release binary cannot abort because of a configuration value.

/// The names the tests use, in the order a registration passes them.
pub const POINTS: &[&str] = &[
    "after-create",
    "after-rotate",
    "after-stage",
    "after-record",
    "after-secret",
];

/// Whether this build can inject faults at all.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Checks `OAUTH_OPERATOR_FAULT` (a comma-separated list of [`POINTS`]) at start-up.
pub fn parse(value: Option<&str>) -> Result<Vec<String>, String> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    if !ENABLED {
        return Err(
            "OAUTH_OPERATOR_FAULT is set, but this build has no fault injection (a test-only cargo feature)".into(),
        );
    }
    value
        .split(',')
        .map(str::trim)
        .map(|p| {
            // Older test names stay accepted: "abort-after-create" = "after-create".
            let p = p.strip_prefix("abort-").unwrap_or(p);
            if POINTS.contains(&p) {
                Ok(p.to_string())
            } else {
                Err(format!(
                    "unknown fault point {p:?} in OAUTH_OPERATOR_FAULT (known: {})",
                    POINTS.join(", ")
                ))
            }
        })
        .collect()
}

/// Dies on the spot when `point` is one of the configured crash points (test builds only).
#[cfg(feature = "fault-injection")]
pub fn crash_point(configured: &[String], point: &str) {
    if configured.iter().any(|p| p == point) {
        tracing::warn!(point, "fault injection: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_: &[String], _: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_no_fault_and_unknown_points_are_refused() {
        assert_eq!(parse(None), Ok(vec![]));
        assert_eq!(parse(Some(" ")), Ok(vec![]));
        if ENABLED {
            assert_eq!(
                parse(Some("abort-after-create,after-stage")),
                Ok(vec!["after-create".to_string(), "after-stage".to_string()])
            );
            assert!(parse(Some("after-lunch")).is_err());
        } else {
            assert!(
                parse(Some("after-create"))
                    .unwrap_err()
                    .contains("no fault injection")
            );
        }
    }
}
