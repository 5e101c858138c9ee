//! `make bench`: the operator at scale, side by side with hydra-maester, on one control plane
//! (kube-apiserver + etcd with an audit log, so each operator's requests are counted by its
//! own user) and one Ory Hydra (each operator reaches it through its own counting proxy).
//!
//! Figures are printed as a table and written as JSON to `target/bench/`; nothing here fails
//! on a number. `BENCH_QUICK=1` (and `cargo test`, which runs this target without `--bench`)
//! runs every workload at small N: the run fails only when a workload could not run.
//!
//! Workloads (see README "Performance"): convergence (N applications created before the
//! operator starts, until every one is Ready with its Secret), the provider floor (the same
//! creates straight to Hydra), steady state (three shortened resync periods), the Clerk
//! emulator at Clerk's rate limits, memory with thousands of applications and foreign
//! Secrets, spec-change latency, and a plot of applications Ready over time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use testenv::fault_proxy::FaultProxy;
use testenv::hydra::Hydra;
use testenv::kube::ControlPlane;
use testenv::{GuardedChild, free_port};

/// The audit user of each operator (both in `system:masters`: RBAC is not what is measured).
const OURS_USER: &str = "bench-oauth-operator";
const MAESTER_USER: &str = "bench-hydra-maester";

/// What a run measures, by mode.
#[derive(Clone, Debug)]
struct Sizes {
    quick: bool,
    /// Convergence N (the last one also gives steady state and latency).
    convergence: Vec<usize>,
    /// Shortened resync period for the steady-state workload.
    resync: Duration,
    latency_changes: usize,
    clerk_dev: usize,
    clerk_prod: usize,
    memory_apps: usize,
    memory_secrets: usize,
    /// Bound on any one convergence.
    timeout: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                quick,
                convergence: vec![20, 50],
                resync: Duration::from_secs(5),
                latency_changes: 10,
                clerk_dev: 50,
                clerk_prod: 100,
                memory_apps: 200,
                memory_secrets: 1_000,
                timeout: Duration::from_secs(180),
            }
        } else {
            Sizes {
                quick,
                convergence: vec![100, 1_000],
                resync: Duration::from_secs(20),
                latency_changes: 100,
                clerk_dev: 1_000,
                clerk_prod: 1_000,
                memory_apps: 10_000,
                memory_secrets: 50_000,
                timeout: Duration::from_secs(1_800),
            }
        }
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it.
    let benching = std::env::args().any(|a| a == "--bench");
    let quick = !benching || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(Sizes::new(quick)))
}

/// Everything a workload needs, shared by all of them.
struct Bench {
    cp: ControlPlane,
    admin: Client,
    hydra: Hydra,
    sizes: Sizes,
    ours_bin: PathBuf,
    ours_kubeconfig: PathBuf,
    maester: Option<Maester>,
    out_dir: PathBuf,
    log_dir: PathBuf,
    audit: Mutex<Audit>,
    /// The floor's seconds by (N, concurrency), for the convergence ratios.
    floor_cache: Mutex<HashMap<(usize, usize), f64>>,
    /// The same with each client's Secret and status written too (see `floor_with_kubernetes`).
    kube_floor_cache: Mutex<HashMap<(usize, usize), f64>>,
}

/// hydra-maester: its binary, its CRD, its kubeconfig.
struct Maester {
    bin: PathBuf,
    version: String,
    kubeconfig: PathBuf,
}

async fn run(sizes: Sizes) -> Result<()> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .context("CARGO_TARGET_TMPDIR has no parent")?
        .to_path_buf();
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    // Under target/tmp/oauth-operator-*: `make test` scans it for leaked secrets.
    let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oauth-operator-bench");
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir)?;
    eprintln!(
        "bench ({}): JSON in {}, logs in {}",
        if sizes.quick { "quick" } else { "full" },
        out_dir.display(),
        log_dir.display()
    );

    let testenv_dir = testenv::testenv_dir()?;
    let cp = tokio::task::block_in_place(|| ControlPlane::start_with(&testenv_dir, true))?;
    let admin = cp.admin_client().await?;
    let hydra = tokio::task::block_in_place(Hydra::start)?;
    install_crds(&admin).await?;
    let ours_kubeconfig = cp.write_kubeconfig_as_user(OURS_USER, &["system:masters"])?;
    let maester = match maester_bin()? {
        Some((bin, src, version)) => {
            install_maester_crd(&admin, &src).await?;
            Some(Maester {
                bin,
                version,
                kubeconfig: cp.write_kubeconfig_as_user(MAESTER_USER, &["system:masters"])?,
            })
        }
        None => None,
    };
    let ours_bin = Path::new(env!("CARGO_BIN_EXE_oauth-operator")).to_path_buf();
    let audit = Mutex::new(Audit::new(cp.audit_log_path()));
    let bench = Bench {
        cp,
        admin,
        hydra,
        sizes,
        ours_bin,
        ours_kubeconfig,
        maester,
        out_dir,
        log_dir,
        audit,
        floor_cache: Mutex::default(),
        kube_floor_cache: Mutex::default(),
    };
    let machine = bench.machine()?;
    write_json(&bench.out_dir, "machine", &machine)?;

    let mut report = Report {
        only: std::env::var("BENCH_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|w| w.trim().to_string()).collect()),
        ..Report::default()
    };
    // Memory first: both operators then watch the whole cluster (their defaults), and no
    // other workload's objects exist yet. Every later workload has a namespace of its own.
    report.run("memory", bench.memory()).await;
    report.run("floor", bench.floor()).await;
    report.run("convergence", bench.convergence()).await;
    report.run("clerk_rate_limited", bench.clerk()).await;
    if let Some(curves) = report
        .results
        .get("convergence")
        .and_then(|v| v.get("curves"))
    {
        let path = bench.out_dir.join("ready-over-time.png");
        match plot::ready_over_time(curves, &path) {
            Ok(()) => eprintln!("plot: {}", path.display()),
            Err(e) => report.failed.push(format!("plot: {e:#}")),
        }
    }
    for (name, value) in &report.results {
        write_json(&bench.out_dir, name, value)?;
    }
    write_json(
        &bench.out_dir,
        "summary",
        &json!({"machine": machine, "results": report.results, "failed": report.failed}),
    )?;
    print_table(&machine, &report.results);
    let markdown = markdown(&machine, &report.results);
    std::fs::write(bench.out_dir.join("summary.md"), &markdown)?;
    println!("\n{markdown}");
    if !report.failed.is_empty() {
        bail!("workloads that did not run: {:#?}", report.failed);
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    results: BTreeMap<String, Value>,
    failed: Vec<String>,
    /// `BENCH_ONLY=memory,convergence`: the workloads to run (all when unset).
    only: Option<Vec<String>>,
}

impl Report {
    async fn run(&mut self, name: &str, work: impl std::future::Future<Output = Result<Value>>) {
        if self
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|w| w == name))
        {
            eprintln!("== {name}: skipped (BENCH_ONLY)");
            return;
        }
        eprintln!("== {name}");
        let started = Instant::now();
        match work.await {
            Ok(mut value) => {
                value["wall_seconds"] = json!(secs(started.elapsed()));
                eprintln!(
                    "   {name}: done in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                self.results.insert(name.to_string(), value);
            }
            Err(e) => {
                eprintln!("   {name}: FAILED: {e:#}");
                self.failed.push(format!("{name}: {e:#}"));
            }
        }
    }
}

fn write_json(dir: &Path, name: &str, value: &Value) -> Result<()> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 {
        json!((a / b * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

/// The CRDs of the operator.
async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in oauth_operator::api::crds() {
        apply_crd(&api, &crd).await?;
    }
    Ok(())
}

async fn install_maester_crd(client: &Client, src: &Path) -> Result<()> {
    let path = src.join("config/crd/bases/hydra.ory.sh_oauth2clients.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text)?;
    apply_crd(&Api::all(client.clone()), &crd).await
}

async fn apply_crd(
    api: &Api<CustomResourceDefinition>,
    crd: &CustomResourceDefinition,
) -> Result<()> {
    let name = crd.name_any();
    api.patch(
        &name,
        &PatchParams::apply("oauth-operator-bench").force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), &name, conditions::is_crd_established()),
    )
    .await
    .context("CRD not established")??;
    Ok(())
}

/// hydra-maester's binary, source tree and version: `HYDRA_MAESTER_BIN`, else the one
/// `scripts/build-hydra-maester.sh` put in the cache. `None` (its workloads are skipped and
/// say so) when neither exists.
fn maester_bin() -> Result<Option<(PathBuf, PathBuf, String)>> {
    let script = testenv::workspace_root().join("scripts/build-hydra-maester.sh");
    let out = Command::new("bash").arg(&script).arg("--print").output()?;
    if !out.status.success() {
        bail!(
            "{} --print: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.trim().splitn(3, '\t');
    let (Some(bin), Some(src), Some(version)) = (fields.next(), fields.next(), fields.next())
    else {
        bail!("unexpected output of {} --print: {text}", script.display());
    };
    let bin =
        std::env::var_os("HYDRA_MAESTER_BIN").map_or_else(|| PathBuf::from(bin), PathBuf::from);
    if !bin.is_file() || !Path::new(src).is_dir() {
        eprintln!(
            "hydra-maester not built ({}): its workloads are skipped (`make bench` builds it)",
            bin.display()
        );
        return Ok(None);
    }
    Ok(Some((bin, PathBuf::from(src), version.to_string())))
}

impl Bench {
    fn machine(&self) -> Result<Value> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        let version = Command::new(&self.ours_bin).arg("version").output()?;
        let testenv = testenv::testenv_dir()?;
        Ok(json!({
            "mode": if self.sizes.quick { "quick" } else { "full" },
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu": cpu,
            "memory_mib": mem_kib / 1024,
            "operator": String::from_utf8_lossy(&version.stdout).trim(),
            "operator_build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "hydra_maester": self.maester.as_ref().map(|m| m.version.clone()),
            "test_components": testenv.file_name().map(|n| n.to_string_lossy().into_owned()),
            "date": chrono_now(),
        }))
    }

    async fn namespace(&self, prefix: &str) -> Result<String> {
        self.cp.create_namespace(prefix).await
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Our operator, restricted to `ns` (or the whole cluster), as its own audit user.
    fn start_ours(&self, name: &str, ns: Option<&str>, args: &[&str]) -> Result<Proc> {
        let port = free_port()?;
        // `BENCH_OURS_WRAPPER="heaptrack -o /tmp/ht"`: run the operator under a profiler (its
        // figures then include the profiler's own).
        let wrapper = std::env::var("BENCH_OURS_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(&self.ours_bin);
                cmd
            }
            None => Command::new(&self.ours_bin),
        };
        cmd.args(["run", "--log-format", "json"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--provider-allowed-networks", "127.0.0.0/8"])
            .args(["--operator-namespace", "default"])
            .args(["--lease-name", &format!("bench-{name}")])
            .args(args)
            .env("KUBECONFIG", &self.ours_kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("POD_NAME", format!("bench-{name}"));
        if let Some(ns) = ns {
            cmd.args(["--watch-namespace", ns]);
        }
        Proc::spawn("oauth-operator", cmd, &self.log(name), Some(port))
    }

    /// hydra-maester at its defaults (one worker), pointed at `proxy`.
    fn start_maester(
        &self,
        name: &str,
        ns: Option<&str>,
        proxy: &FaultProxy,
        sync: &str,
    ) -> Result<Proc> {
        let m = self
            .maester
            .as_ref()
            .context("hydra-maester is not built")?;
        let port = proxy
            .url()
            .rsplit(':')
            .next()
            .context("proxy URL without a port")?
            .to_string();
        let metrics = free_port()?;
        let mut cmd = Command::new(&m.bin);
        cmd.args([
            "--hydra-url=http://127.0.0.1",
            &format!("--hydra-port={port}"),
            "--endpoint=/admin/clients",
            &format!("--sync-period={sync}"),
            &format!("--metrics-addr=127.0.0.1:{metrics}"),
            &format!("--kubeconfig={}", m.kubeconfig.display()),
        ])
        .env("NAMESPACE", ns.unwrap_or(""));
        Proc::spawn("hydra-maester", cmd, &self.log(name), None)
    }

    /// An `OAuthProvider` named `hydra` in `ns`, reaching Hydra through `proxy`.
    async fn hydra_provider(
        &self,
        ns: &str,
        proxy: &FaultProxy,
        budget: Option<(u32, u32)>,
    ) -> Result<()> {
        let mut spec =
            json!({"hydra": {"adminUrl": proxy.url(), "issuerUrl": self.hydra.issuer()}});
        if let Some((requests, period)) = budget {
            spec["requestBudget"] = json!({"requests": requests, "periodSeconds": period});
        }
        let provider: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
            "metadata": {"name": "hydra"}, "spec": spec,
        }))?;
        Api::<DynamicObject>::namespaced_with(
            self.admin.clone(),
            ns,
            &ours_resource("OAuthProvider"),
        )
        .create(&PostParams::default(), &provider)
        .await?;
        Ok(())
    }

    /// Deletes every client at Hydra that oauth-operator made (its `owner`), so that a
    /// workload's drift lists hold its own clients only, as a Hydra serving one installation
    /// would (the earlier workloads' thousands would otherwise be listed every resync).
    async fn purge_own_clients(&self) -> Result<usize> {
        let http = reqwest::Client::new();
        let admin = self.hydra.admin_url();
        let mut purged = 0;
        loop {
            let page: Vec<Value> = http
                .get(format!("{admin}/admin/clients"))
                .query(&[("owner", "oauth-operator"), ("page_size", "500")])
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if page.is_empty() {
                return Ok(purged);
            }
            let ids: Vec<String> = page
                .iter()
                .filter_map(|c| c["client_id"].as_str().map(str::to_string))
                .collect();
            purged += ids.len();
            futures::stream::iter(ids)
                .map(|id| {
                    let (http, url) = (http.clone(), format!("{admin}/admin/clients/{id}"));
                    async move {
                        // Concurrent deletes can lose a transaction race at Hydra: again.
                        for _ in 0..10 {
                            let status = http.delete(&url).send().await?.status();
                            if status.is_success() || status == 404 {
                                return anyhow::Ok(());
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        bail!("Hydra did not delete {url}")
                    }
                })
                .buffer_unordered(8)
                .try_collect::<Vec<()>>()
                .await?;
        }
    }

    /// Creates `n` applications of `kind` in `ns` (32 requests in flight).
    async fn create_apps(&self, kind: Kind, ns: &str, n: usize, provider: &str) -> Result<()> {
        let api = Api::<DynamicObject>::namespaced_with(self.admin.clone(), ns, &kind.resource());
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                async move {
                    let object = kind.object(&app_name(i), provider)?;
                    api.create(&PostParams::default(), &object).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Starts an operator on `n` applications created beforehand and waits until every one is
    /// Ready with its Secret. Returns the figures and the running operator.
    #[allow(clippy::too_many_arguments)]
    async fn converge(
        &self,
        label: &str,
        kind: Kind,
        ns: &str,
        n: usize,
        proxy: Option<&FaultProxy>,
        start: impl FnOnce() -> Result<Proc>,
    ) -> Result<(Value, Proc, Vec<f64>)> {
        let progress = Progress::track(self.admin.clone(), kind, ns).await?;
        let audit_before = self.audit_counts();
        let proxy_before = proxy.map(|p| p.log().len());
        let started = Instant::now();
        let mut op = start()?;
        progress.started(started);
        let mut peak = 0;
        loop {
            op.check()?;
            peak = peak.max(op.rss_kib());
            if progress.done(n) {
                break;
            }
            if started.elapsed() > self.sizes.timeout {
                bail!(
                    "{label}: {} of {n} Ready, {} Secrets after {:?} (see {})",
                    progress.ready_count(),
                    progress.secret_count(),
                    self.sizes.timeout,
                    op.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = started.elapsed();
        let curve = progress.curve();
        progress.stop();
        let provider_requests = proxy
            .zip(proxy_before)
            .map(|(p, before)| p.log().len() - before);
        let api = self.audit_counts().since(&audit_before, kind.user());
        let n_f = n as f64;
        let figures = json!({
            "operator": label,
            "n": n,
            "seconds": secs(elapsed),
            "apps_per_second": (n_f / elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "provider_requests_per_app": provider_requests.map(|r| round2(r as f64 / n_f)),
            "apiserver_requests_per_app": round2(api.app_requests() as f64 / n_f),
            "apiserver_reads_per_app": round2(api.reads as f64 / n_f),
            "apiserver_writes_per_app": round2(api.writes as f64 / n_f),
            "apiserver_lease_and_event_requests": api.leases + api.events,
            "apiserver_requests_by_kind": api.by_kind,
            "peak_rss_mib": round2(op.peak_rss_kib().max(peak) as f64 / 1024.0),
            "cpu_seconds": round2(op.cpu_seconds()),
        });
        eprintln!("   {label} N={n}: {figures}");
        Ok((figures, op, curve))
    }

    /// Three resync periods of a converged operator: per application and resync.
    async fn steady(
        &self,
        label: &str,
        kind: Kind,
        n: usize,
        proxy: &FaultProxy,
        op: &mut Proc,
    ) -> Result<Value> {
        // Let the passes that convergence itself caused settle.
        tokio::time::sleep(self.sizes.resync).await;
        let audit_before = self.audit_counts();
        let proxy_before = proxy.log().len();
        let cpu_before = op.cpu_seconds();
        let periods = 3;
        tokio::time::sleep(self.sizes.resync * periods).await;
        op.check()?;
        let log = proxy.log();
        let provider = log.len() - proxy_before;
        // What the provider was asked: a list, or something about one client.
        let mut provider_by_kind = BTreeMap::<String, u64>::new();
        for r in &log[proxy_before..] {
            let path = r.path.split('?').next().unwrap_or_default();
            let what = if path.trim_end_matches('/').ends_with("/clients") {
                "clients"
            } else {
                "clients/{id}"
            };
            *provider_by_kind
                .entry(format!("{} {what}", r.method))
                .or_default() += 1;
        }
        let api = self.audit_counts().since(&audit_before, kind.user());
        let per = (n as f64) * f64::from(periods);
        let figures = json!({
            "operator": label,
            "n": n,
            "resync_seconds": self.sizes.resync.as_secs(),
            "periods": periods,
            "provider_requests_per_app_per_resync": round3(provider as f64 / per),
            "provider_requests_by_kind": provider_by_kind,
            "apiserver_reads_per_app_per_resync": round3(api.reads as f64 / per),
            "apiserver_writes_per_app_per_resync": round3(api.writes as f64 / per),
            "apiserver_lease_and_event_requests": api.leases + api.events,
            "apiserver_requests_by_kind": api.by_kind,
            "cpu_cores_while_steady": round3((op.cpu_seconds() - cpu_before) / (self.sizes.resync * periods).as_secs_f64()),
            "rss_mib": round2(op.rss_kib() as f64 / 1024.0),
        });
        eprintln!("   steady {label}: {figures}");
        Ok(figures)
    }

    fn audit_counts(&self) -> AuditCounts {
        let mut audit = self.audit.lock().expect("audit lock");
        audit.read();
        audit.counts.clone()
    }

    /// Convergence at every N: ours at defaults (then steady state and latency at the last
    /// N), ours at concurrency 1, hydra-maester at its defaults (then steady state).
    async fn convergence(&self) -> Result<Value> {
        let mut runs = Vec::new();
        let mut steady = Vec::new();
        let mut curves = serde_json::Map::new();
        let mut latency = Value::Null;
        let floor = self.floor_cache.lock().expect("floor").clone();
        let kube_floor = self.kube_floor_cache.lock().expect("floor").clone();
        let last = *self.sizes.convergence.last().context("no N")?;
        let resync = format!("{}s", self.sizes.resync.as_secs());
        for &n in &self.sizes.convergence {
            let variants: Vec<Variant> = vec![
                (
                    "oauth-operator",
                    Kind::Ours,
                    vec!["--resync-interval".into(), resync.clone()],
                    None,
                ),
                (
                    "oauth-operator (budget 1000/1s)",
                    Kind::Ours,
                    vec!["--resync-interval".into(), resync.clone()],
                    Some((1000, 1)),
                ),
                (
                    "oauth-operator (concurrency 1)",
                    Kind::Ours,
                    vec!["--concurrency".into(), "1".into()],
                    None,
                ),
                ("hydra-maester", Kind::Maester, vec![], None),
            ];
            for (label, kind, args, budget) in variants {
                if kind == Kind::Maester && self.maester.is_none() {
                    runs.push(
                        json!({"operator": label, "n": n, "skipped": "hydra-maester not built"}),
                    );
                    continue;
                }
                let ns = self.namespace("bench-conv").await?;
                let proxy = FaultProxy::start(&self.hydra.admin_url(), 1).await?;
                if kind == Kind::Ours {
                    let purged = self.purge_own_clients().await?;
                    eprintln!("   purged {purged} clients of earlier workloads at Hydra");
                    self.hydra_provider(&ns, &proxy, budget).await?;
                }
                self.create_apps(kind, &ns, n, "hydra").await?;
                let name = format!("{}-{n}", label.replace([' ', '(', ')', '/'], "-"));
                let (mut figures, mut op, curve) = self
                    .converge(label, kind, &ns, n, Some(&proxy), || match kind {
                        Kind::Ours | Kind::Clerk => {
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            self.start_ours(&name, Some(&ns), &args)
                        }
                        Kind::Maester => self.start_maester(&name, Some(&ns), &proxy, &resync),
                    })
                    .await?;
                let concurrency = if label.contains("concurrency 1") || kind == Kind::Maester {
                    1
                } else {
                    16
                };
                if let Some(floor) = floor.get(&(n, concurrency)) {
                    figures["floor_seconds"] = json!(floor);
                    figures["vs_floor"] = ratio(figures["seconds"].as_f64().unwrap_or(0.0), *floor);
                }
                if let Some(floor) = kube_floor.get(&(n, concurrency)) {
                    figures["floor_with_secret_and_status_seconds"] = json!(floor);
                    figures["vs_floor_with_secret_and_status"] =
                        ratio(figures["seconds"].as_f64().unwrap_or(0.0), *floor);
                }
                if n == last {
                    curves.insert(label.to_string(), json!(curve));
                    let is_default = label == "oauth-operator" || label == "hydra-maester";
                    if is_default || label.contains("budget") {
                        steady.push(self.steady(label, kind, n, &proxy, &mut op).await?);
                    }
                    if label == "oauth-operator" {
                        latency = self.latency(&ns, n).await?;
                    }
                }
                runs.push(figures);
                op.stop();
            }
        }
        // Ratios measured in this run: hydra-maester's time over ours.
        let mut versus = Vec::new();
        for &n in &self.sizes.convergence {
            let time = |label: &str| {
                runs.iter()
                    .find(|r| r["operator"] == label && r["n"] == n)
                    .and_then(|r| r["seconds"].as_f64())
            };
            if let Some(maester) = time("hydra-maester") {
                for label in [
                    "oauth-operator",
                    "oauth-operator (budget 1000/1s)",
                    "oauth-operator (concurrency 1)",
                ] {
                    if let Some(ours) = time(label) {
                        versus.push(json!({"n": n, "operator": label, "hydra_maester_over_ours": ratio(maester, ours)}));
                    }
                }
            }
        }
        Ok(
            json!({"runs": runs, "versus_hydra_maester": versus, "steady": steady, "latency": latency, "curves": curves}),
        )
    }
}

/// One operator configuration: label, kind, extra flags, the provider's request budget.
type Variant<'a> = (&'a str, Kind, Vec<String>, Option<(u32, u32)>);

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn app_name(i: usize) -> String {
    format!("app-{i:05}")
}

fn ours_resource(kind: &str) -> ApiResource {
    ApiResource {
        group: "oauth-operator.dev".into(),
        version: "v1alpha1".into(),
        api_version: "oauth-operator.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    }
}

/// Which operator's applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// OAuthApplications on Hydra (client_credentials).
    Ours,
    /// OAuth2Clients of hydra-maester.
    Maester,
    /// OAuthApplications on Clerk (authorization_code, Clerk's default).
    Clerk,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Ours | Kind::Clerk => ours_resource("OAuthApplication"),
            Kind::Maester => ApiResource {
                group: "hydra.ory.sh".into(),
                version: "v1alpha1".into(),
                api_version: "hydra.ory.sh/v1alpha1".into(),
                kind: "OAuth2Client".into(),
                plural: "oauth2clients".into(),
            },
        }
    }

    fn user(self) -> &'static str {
        match self {
            Kind::Ours | Kind::Clerk => OURS_USER,
            Kind::Maester => MAESTER_USER,
        }
    }

    /// The same client either way: one redirect URI, client_credentials, Secret `<name>-oauth`.
    fn object(self, name: &str, provider: &str) -> Result<DynamicObject> {
        let redirect = format!("https://{name}.example.com/callback");
        let value = match self {
            Kind::Ours => json!({
                "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthApplication",
                "metadata": {"name": name},
                "spec": {"providerRef": {"name": provider}, "redirectUris": [redirect],
                         "grantTypes": ["client_credentials"]},
            }),
            Kind::Clerk => json!({
                "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthApplication",
                "metadata": {"name": name},
                "spec": {"providerRef": {"name": provider}, "redirectUris": [redirect],
                         "scopes": ["profile", "email"]},
            }),
            Kind::Maester => json!({
                "apiVersion": "hydra.ory.sh/v1alpha1", "kind": "OAuth2Client",
                "metadata": {"name": name},
                "spec": {"grantTypes": ["client_credentials"], "redirectUris": [redirect],
                         "scope": "openid", "secretName": format!("{name}-oauth")},
            }),
        };
        Ok(serde_json::from_value(value)?)
    }
}

/// Watches one namespace's applications and Secrets: when each became Ready, which Secrets
/// exist.
struct Progress {
    state: Arc<Mutex<ProgressState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct ProgressState {
    started: Option<Instant>,
    ready: HashMap<String, Duration>,
    secrets: HashSet<String>,
}

impl Progress {
    async fn track(client: Client, kind: Kind, ns: &str) -> Result<Progress> {
        let state = Arc::new(Mutex::new(ProgressState::default()));
        let apps = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &kind.resource());
        let s = state.clone();
        let apps_task = tokio::spawn(async move {
            let mut stream = watcher(apps, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(object)) = stream.next().await {
                if is_ready(&object.data) {
                    let mut state = s.lock().expect("progress");
                    let at = state.started.map(|t| t.elapsed()).unwrap_or_default();
                    state.ready.entry(object.name_any()).or_insert(at);
                }
            }
        });
        let secrets = Api::<PartialObjectMeta<Secret>>::namespaced(client, ns);
        let s = state.clone();
        let secrets_task = tokio::spawn(async move {
            let mut stream = watcher(secrets, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(object)) = stream.next().await {
                s.lock()
                    .expect("progress")
                    .secrets
                    .insert(object.name_any());
            }
        });
        Ok(Progress {
            state,
            tasks: vec![apps_task, secrets_task],
        })
    }

    fn started(&self, at: Instant) {
        self.state.lock().expect("progress").started = Some(at);
    }

    fn done(&self, n: usize) -> bool {
        let state = self.state.lock().expect("progress");
        state.ready.len() >= n
            && (0..n).all(|i| state.secrets.contains(&format!("{}-oauth", app_name(i))))
    }

    fn ready_count(&self) -> usize {
        self.state.lock().expect("progress").ready.len()
    }

    fn secret_count(&self) -> usize {
        self.state.lock().expect("progress").secrets.len()
    }

    /// Seconds at which each application became Ready, sorted.
    fn curve(&self) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .state
            .lock()
            .expect("progress")
            .ready
            .values()
            .map(|d| secs(*d))
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

fn is_ready(data: &Value) -> bool {
    data["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// An operator process: killed on drop; its memory and CPU from /proc.
struct Proc {
    child: Option<GuardedChild>,
    pid: u32,
    log: PathBuf,
    #[allow(dead_code)]
    port: Option<u16>,
    peak: u64,
    cpu: f64,
}

impl Proc {
    fn spawn(name: &str, cmd: Command, log: &Path, port: Option<u16>) -> Result<Proc> {
        let child = GuardedChild::spawn(name, cmd, log)?;
        Ok(Proc {
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
            port,
            peak: 0,
            cpu: 0.0,
        })
    }

    fn check(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child
                .check_running()
                .with_context(|| format!("see {}", self.log.display()))?;
        }
        Ok(())
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The kernel's high-water mark of resident memory.
    fn peak_rss_kib(&mut self) -> u64 {
        self.peak = self.peak.max(self.status_kib("VmHWM:"));
        self.peak
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&mut self) -> f64 {
        // Fields 14 and 15 of /proc/PID/stat, after the parenthesised command name.
        let ticks = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(") ")?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
            });
        if let Some(ticks) = ticks {
            // USER_HZ is 100 on every Linux this runs on.
            self.cpu = ticks / 100.0;
        }
        self.cpu
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}

/// The apiserver's audit log, read as it grows: requests per user.
struct Audit {
    path: PathBuf,
    offset: u64,
    counts: AuditCounts,
}

#[derive(Clone, Default)]
struct AuditCounts {
    by_user: HashMap<String, UserCounts>,
}

#[derive(Clone, Default, Debug)]
struct UserCounts {
    /// Every request by `verb resource[/subresource]`, Leases and Events included.
    by_kind: BTreeMap<String, u64>,
    /// get, list, watch of everything but Leases and Events.
    reads: u64,
    /// create, update, patch, delete of everything but Leases and Events.
    writes: u64,
    leases: u64,
    events: u64,
}

impl UserCounts {
    fn app_requests(&self) -> u64 {
        self.reads + self.writes
    }
}

impl AuditCounts {
    fn since(&self, before: &AuditCounts, user: &str) -> UserCounts {
        let now = self.by_user.get(user).cloned().unwrap_or_default();
        let then = before.by_user.get(user).cloned().unwrap_or_default();
        let by_kind = now
            .by_kind
            .iter()
            .map(|(k, v)| (k.clone(), v - then.by_kind.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        UserCounts {
            by_kind,
            reads: now.reads - then.reads,
            writes: now.writes - then.writes,
            leases: now.leases - then.leases,
            events: now.events - then.events,
        }
    }
}

impl Audit {
    fn new(path: PathBuf) -> Self {
        Audit {
            path,
            offset: 0,
            counts: AuditCounts::default(),
        }
    }

    /// Counts the lines written since the last read (a partial last line waits for the next).
    fn read(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        while let Ok(read) = reader.read_line(&mut line) {
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += read as u64;
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                let user = event["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let resource = event["objectRef"]["resource"].as_str().unwrap_or_default();
                let verb = event["verb"].as_str().unwrap_or_default();
                let counts = self.counts.by_user.entry(user).or_default();
                let kind = match event["objectRef"]["subresource"].as_str() {
                    Some(sub) => format!("{verb} {resource}/{sub}"),
                    None => format!("{verb} {resource}"),
                };
                *counts.by_kind.entry(kind).or_default() += 1;
                match (resource, verb) {
                    ("leases", _) => counts.leases += 1,
                    ("events", _) => counts.events += 1,
                    (_, "get" | "list" | "watch") => counts.reads += 1,
                    _ => counts.writes += 1,
                }
            }
            line.clear();
        }
    }
}

fn chrono_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The run as Markdown tables (`target/bench/summary.md`), as the README shows them.
fn markdown(machine: &Value, results: &BTreeMap<String, Value>) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let text = |v: &Value| match v {
        Value::Null => "–".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let runs = |key: &str| -> Vec<Value> {
        results
            .get(key)
            .and_then(|v| v["runs"].as_array())
            .cloned()
            .unwrap_or_default()
    };
    let _ = writeln!(
        md,
        "Run of {} ({} mode, {} build of oauth-operator, hydra-maester {}): {} cores ({}), {} MiB, {}.\n",
        text(&machine["date"]),
        text(&machine["mode"]),
        text(&machine["operator_build"]),
        text(&machine["hydra_maester"]),
        text(&machine["cores"]),
        text(&machine["cpu"]),
        text(&machine["memory_mib"]),
        text(&machine["test_components"]),
    );
    let convergence = results.get("convergence").cloned().unwrap_or(Value::Null);
    let versus = |label: &Value, n: &Value| {
        convergence["versus_hydra_maester"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|r| &r["operator"] == label && &r["n"] == n)
                    .map(|r| text(&r["hydra_maester_over_ours"]))
            })
            .unwrap_or_else(|| "–".into())
    };
    md.push_str(
        "**Convergence** against Hydra (N applications created before the operator starts, until \
         every one is Ready with its Secret; each run of oauth-operator starts with no client of \
         an earlier workload of its own at Hydra):\n\n\
         | operator | N | seconds | hydra-maester / this | vs floor | vs floor with Secret + status | provider req/app | apiserver req/app (reads + writes) | events/app | peak RSS MiB | CPU s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs("convergence") {
        if r.get("skipped").is_some() {
            continue;
        }
        let n = r["n"].as_f64().unwrap_or(1.0).max(1.0);
        let events = r["apiserver_requests_by_kind"]["create events"]
            .as_f64()
            .map(|e| format!("{:.2}", e / n))
            .unwrap_or_else(|| "0".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} ({} + {}) | {} | {} | {} |",
            text(&r["operator"]),
            text(&r["n"]),
            text(&r["seconds"]),
            versus(&r["operator"], &r["n"]),
            text(&r["vs_floor"]),
            text(&r["vs_floor_with_secret_and_status"]),
            text(&r["provider_requests_per_app"]),
            text(&r["apiserver_requests_per_app"]),
            text(&r["apiserver_reads_per_app"]),
            text(&r["apiserver_writes_per_app"]),
            events,
            text(&r["peak_rss_mib"]),
            text(&r["cpu_seconds"]),
        );
    }
    md.push_str(
        "\n**The floor** (the same creates sent straight to Hydra over HTTP; and the same again with \
         each client's Secret and a Ready status written straight to the apiserver, the least any \
         operator does on this machine; with hydra-maester's three writes (the finalizer, the \
         Secret, the status); and with this operator's registration request for request (the \
         finalizer, two reads, the status before the create, the Secret, the Ready status, the \
         event). All of them straight from the bench, no operator running; in brackets the ratio \
         to the floor):\n\n\
         | N | concurrency | seconds | with Secret + status | with hydra-maester's writes | with our registration's requests |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs("floor") {
        let with = |key: &str| match &r[format!("{key}_seconds")] {
            Value::Null => "–".to_string(),
            s => format!("{} ({}x)", text(s), text(&r[format!("{key}_vs_floor")])),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            text(&r["n"]),
            text(&r["concurrency"]),
            text(&r["seconds"]),
            with(KubeFloor::SecretAndStatus.key()),
            with(KubeFloor::MaesterWrites.key()),
            with(KubeFloor::OurProtocol.key()),
        );
    }
    md.push_str(
        "\n**Steady state** (three shortened resync periods after convergence, per application \
         and period):\n\n\
         | operator | N | resync s | provider req | apiserver reads | apiserver writes | CPU cores | RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in convergence["steady"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            text(&r["operator"]),
            text(&r["n"]),
            text(&r["resync_seconds"]),
            text(&r["provider_requests_per_app_per_resync"]),
            text(&r["apiserver_reads_per_app_per_resync"]),
            text(&r["apiserver_writes_per_app_per_resync"]),
            text(&r["cpu_cores_while_steady"]),
            text(&r["rss_mib"]),
        );
    }
    let latency = &convergence["latency"];
    let _ = writeln!(
        md,
        "\n**Spec-change latency** ({} redirect-URI changes, one application at a time, while {} \
         others are steady; until Hydra has the change): p50 {} s, p99 {} s, max {} s.",
        text(&latency["changes"]),
        text(&latency["steady_apps"]),
        text(&latency["p50_seconds"]),
        text(&latency["p99_seconds"]),
        text(&latency["max_seconds"]),
    );
    md.push_str(
        "\n**Rate-limited provider** (the Clerk emulator enforcing Clerk's limit; the provider's \
         `requestBudget` set to that limit; the minimum is the two requests Clerk takes per \
         application at the limit's rate):\n\n\
         | instance | limit | N | seconds | minimum s | vs minimum | creates alone s | provider req/app | 429s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs("clerk_rate_limited") {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            text(&r["instance"]),
            text(&r["limit"]),
            text(&r["n"]),
            text(&r["seconds"]),
            text(&r["minimum_seconds"]),
            text(&r["vs_minimum"]),
            text(&r["minimum_seconds_creates_only"]),
            text(&r["provider_requests_per_app"]),
            text(&r["responses_429"]),
        );
    }
    md.push_str(
        "\n**Memory** (the applications created before the operator starts, beside Secrets it \
         does not own; both operators watch the whole cluster):\n\n\
         | operator | applications | foreign Secrets | seconds to Ready | peak RSS MiB | RSS after MiB |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in runs("memory") {
        if r.get("skipped").is_some() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            text(&r["operator"]),
            text(&r["n"]),
            text(&r["foreign_secrets"]),
            text(&r["seconds"]),
            text(&r["peak_rss_mib"]),
            text(&r["settled_rss_mib"]),
        );
    }
    md
}

fn print_table(machine: &Value, results: &BTreeMap<String, Value>) {
    println!("\nmachine: {machine}");
    println!(
        "\n{:<34} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "convergence", "N", "seconds", "vs floor", "prov/app", "api/app", "peak MiB", "CPU s"
    );
    if let Some(runs) = results
        .get("convergence")
        .and_then(|c| c["runs"].as_array())
    {
        for r in runs {
            if let Some(skipped) = r["skipped"].as_str() {
                println!(
                    "{:<34} {:>6} skipped: {skipped}",
                    r["operator"].as_str().unwrap_or(""),
                    r["n"]
                );
                continue;
            }
            println!(
                "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                r["operator"].as_str().unwrap_or(""),
                r["n"],
                r["seconds"],
                r["vs_floor"],
                r["provider_requests_per_app"],
                r["apiserver_requests_per_app"],
                r["peak_rss_mib"],
                r["cpu_seconds"]
            );
        }
    }
    for (key, value) in results {
        if key != "convergence" || value.get("versus_hydra_maester").is_some() {
            let value = if key == "convergence" {
                json!({"versus_hydra_maester": value["versus_hydra_maester"], "steady": value["steady"], "latency": value["latency"]})
            } else {
                value.clone()
            };
            println!(
                "\n{key}: {}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
    }
}

impl Bench {
    /// The fastest Hydra creates N clients over HTTP, at concurrency 1 (hydra-maester's) and
    /// 16 (ours by default), each with a secret chosen by the caller, as ours does.
    async fn floor(&self) -> Result<Value> {
        let http = reqwest::Client::new();
        let mut runs = Vec::new();
        for &n in &self.sizes.convergence {
            for concurrency in [1usize, 16] {
                let run = testenv::server_support::unique_suffix();
                let url = format!("{}/admin/clients", self.hydra.admin_url());
                let started = Instant::now();
                futures::stream::iter(0..n)
                    .map(|i| {
                        let (http, url, run) = (http.clone(), url.clone(), run.clone());
                        async move {
                            let secret = testenv::server_support::random_hex(24)?;
                            let client_id = format!("floor-{run}-{i}");
                            hydra_create(&http, &url, &client_id, &secret, &format!("floor-{i}"))
                                .await
                        }
                    })
                    .buffer_unordered(concurrency)
                    .try_collect::<Vec<()>>()
                    .await?;
                let seconds = secs(started.elapsed());
                self.floor_cache
                    .lock()
                    .expect("floor")
                    .insert((n, concurrency), seconds);
                let mut figures = json!({"n": n, "concurrency": concurrency, "seconds": seconds});
                if concurrency > 1 {
                    for level in [
                        KubeFloor::SecretAndStatus,
                        KubeFloor::MaesterWrites,
                        KubeFloor::OurProtocol,
                    ] {
                        let with_kube = self.floor_with_kubernetes(n, concurrency, level).await?;
                        let key = level.key();
                        figures[format!("{key}_seconds")] = json!(with_kube);
                        figures[format!("{key}_vs_floor")] = ratio(with_kube, seconds);
                        if level == KubeFloor::SecretAndStatus {
                            self.kube_floor_cache
                                .lock()
                                .expect("floor")
                                .insert((n, concurrency), with_kube);
                        }
                    }
                }
                runs.push(figures);
            }
        }
        eprintln!("   floor: {runs:?}");
        Ok(json!({"runs": runs}))
    }

    /// What Kubernetes adds to the floor, with no operator: the same creates at Hydra, and for
    /// each client the apiserver requests of [`KubeFloor`], sent straight from here at the
    /// same concurrency, on applications created beforehand. A bound, not an operator: no
    /// watches, no decisions.
    async fn floor_with_kubernetes(
        &self,
        n: usize,
        concurrency: usize,
        level: KubeFloor,
    ) -> Result<f64> {
        let finalizer = level != KubeFloor::SecretAndStatus;
        let protocol = level == KubeFloor::OurProtocol;
        let ns = self.namespace("bench-floor").await?;
        self.create_apps(Kind::Ours, &ns, n, "none").await?;
        let apps = Api::<DynamicObject>::namespaced_with(
            self.admin.clone(),
            &ns,
            &ours_resource("OAuthApplication"),
        );
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), &ns);
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.admin.clone(), &ns);
        let http = reqwest::Client::new();
        let run = testenv::server_support::unique_suffix();
        let url = format!("{}/admin/clients", self.hydra.admin_url());
        let started = Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let (http, url, run) = (http.clone(), url.clone(), run.clone());
                let (apps, secrets, events, ns) =
                    (apps.clone(), secrets.clone(), events.clone(), ns.clone());
                async move {
                    let name = app_name(i);
                    let client_id = format!("floor-k-{run}-{i}");
                    let secret = testenv::server_support::random_hex(24)?;
                    let condition = |kind: &str, reason: &str| {
                        anyhow::Ok(json!({
                            "type": kind, "status": "True", "reason": reason,
                            "message": "registered", "observedGeneration": 1,
                            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now()
                                .round(k8s_openapi::jiff::Unit::Second)?
                                .to_string(),
                        }))
                    };
                    if finalizer {
                        let finalizer = json!({"metadata": {"finalizers": ["oauth-operator.dev/cleanup"]}});
                        apps.patch(&name, &PatchParams::default(), &Patch::Merge(&finalizer))
                            .await?;
                    }
                    // The status naming the client, with one condition.
                    let status = |kind: &str, reason: &str| {
                        anyhow::Ok(json!({"status": {
                            "clientId": client_id,
                            "providerObjectId": client_id,
                            "secretName": format!("{name}-credentials"),
                            "observedGeneration": 1,
                            "conditions": [condition(kind, reason)?],
                        }}))
                    };
                    if protocol {
                        secrets.get_opt(&format!("{name}-credentials")).await?;
                        secrets.get_opt(&format!("{name}-staged")).await?;
                        let pending = status("Reconciling", "Registering")?;
                        apps.patch_status(&name, &PatchParams::default(), &Patch::Merge(&pending))
                            .await?;
                    }
                    hydra_create(&http, &url, &client_id, &secret, &name).await?;
                    let object: Secret = serde_json::from_value(json!({
                        "metadata": {"name": format!("{name}-credentials")},
                        "stringData": {"clientId": client_id, "clientSecret": secret},
                    }))?;
                    secrets.create(&PostParams::default(), &object).await?;
                    let ready = status("Ready", "Reconciled")?;
                    apps.patch_status(&name, &PatchParams::default(), &Patch::Merge(&ready))
                        .await?;
                    if protocol {
                        let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
                            "metadata": {"generateName": format!("{name}.")},
                            "involvedObject": {"apiVersion": "oauth-operator.dev/v1alpha1",
                                "kind": "OAuthApplication", "name": name, "namespace": ns},
                            "reason": "Registered", "message": "registered client", "type": "Normal",
                            "source": {"component": "bench-floor"},
                        }))?;
                        events.create(&PostParams::default(), &event).await?;
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(secs(started.elapsed()))
    }

    /// N applications and M foreign Secrets in the cluster, every application pending when
    /// the operator starts: peak and settled RSS of each operator watching the whole cluster.
    async fn memory(&self) -> Result<Value> {
        let (n, m) = (self.sizes.memory_apps, self.sizes.memory_secrets);
        let foreign = self.namespace("bench-foreign").await?;
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), &foreign);
        let filler = "x".repeat(256);
        futures::stream::iter(0..m)
            .map(|i| {
                let (secrets, filler) = (secrets.clone(), filler.clone());
                async move {
                    let secret: Secret = serde_json::from_value(json!({
                        "metadata": {"name": format!("foreign-{i:06}")},
                        "stringData": {"value": filler},
                    }))?;
                    secrets.create(&PostParams::default(), &secret).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        let mut runs = Vec::new();
        for kind in [Kind::Ours, Kind::Maester] {
            if kind == Kind::Maester && self.maester.is_none() {
                runs.push(
                    json!({"operator": "hydra-maester", "skipped": "hydra-maester not built"}),
                );
                continue;
            }
            let ns = self.namespace("bench-mem").await?;
            let proxy = FaultProxy::start(&self.hydra.admin_url(), 2).await?;
            let label = match kind {
                Kind::Ours => {
                    // At its defaults (Hydra's default budget, 100 per second).
                    self.hydra_provider(&ns, &proxy, None).await?;
                    "oauth-operator"
                }
                Kind::Maester | Kind::Clerk => "hydra-maester",
            };
            self.create_apps(kind, &ns, n, "hydra").await?;
            let name = format!("memory-{label}");
            let (mut figures, mut op, _) = self
                .converge(label, kind, &ns, n, Some(&proxy), || match kind {
                    Kind::Ours | Kind::Clerk => self.start_ours(&name, None, &[]),
                    Kind::Maester => self.start_maester(&name, None, &proxy, "10h"),
                })
                .await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            figures["settled_rss_mib"] = json!(round2(op.rss_kib() as f64 / 1024.0));
            figures["foreign_secrets"] = json!(m);
            op.stop();
            runs.push(figures);
        }
        Ok(json!({"apps": n, "foreign_secrets": m, "runs": runs}))
    }

    /// A spec change (one more redirect URI) on one application while the others are
    /// steady: time until Hydra returns the change.
    async fn latency(&self, ns: &str, n: usize) -> Result<Value> {
        let apps =
            Api::<DynamicObject>::namespaced_with(self.admin.clone(), ns, &Kind::Ours.resource());
        let http = reqwest::Client::new();
        let mut samples = Vec::new();
        for k in 0..self.sizes.latency_changes {
            let name = app_name((k * 7919) % n);
            let app = apps.get(&name).await?;
            let client_id = app.data["status"]["clientId"]
                .as_str()
                .with_context(|| format!("{name} has no clientId"))?
                .to_string();
            let mut uris: Vec<Value> = app.data["spec"]["redirectUris"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let added = format!("https://{name}.example.com/changed-{k}");
            uris.push(json!(added));
            let started = Instant::now();
            apps.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"redirectUris": uris}})),
            )
            .await?;
            let url = format!("{}/admin/clients/{client_id}", self.hydra.admin_url());
            loop {
                let client: Value = http
                    .get(&url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                if client["redirect_uris"]
                    .as_array()
                    .is_some_and(|u| u.contains(&json!(added)))
                {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("{name}: Hydra did not get the change in 60 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples.push(started.elapsed().as_secs_f64());
        }
        samples.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        let figures = json!({
            "changes": samples.len(),
            "steady_apps": n,
            "p50_seconds": round3(pick(0.50)),
            "p99_seconds": round3(pick(0.99)),
            "max_seconds": round3(pick(1.0)),
        });
        eprintln!("   latency: {figures}");
        Ok(figures)
    }

    /// The Clerk emulator at Clerk's development and production limits.
    async fn clerk(&self) -> Result<Value> {
        use clerk_emulator::{Emulator, EmulatorConfig};
        let window = Duration::from_secs(10);
        let mut runs = Vec::new();
        for (instance, limit, n) in [
            ("development", 100u32, self.sizes.clerk_dev),
            ("production", 1000, self.sizes.clerk_prod),
        ] {
            let emulator =
                Emulator::start(EmulatorConfig::default().with_rate_limit(limit, window))?;
            let ns = self.namespace("bench-clerk").await?;
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": "clerk-admin", "annotations": {
                    "oauth-operator.dev/credential-for": emulator.base_url().trim_end_matches('/')}},
                "stringData": {"secretKey": emulator.secret_key()},
            }))?;
            Api::<Secret>::namespaced(self.admin.clone(), &ns)
                .create(&PostParams::default(), &secret)
                .await?;
            // The provider's request budget is the instance's limit, as the README tells a
            // user to set it.
            let provider: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
                "metadata": {"name": "clerk"},
                "spec": {
                    "clerk": {"baseUrl": emulator.base_url(), "secretKeyRef": {"name": "clerk-admin"}},
                    "requestBudget": {"requests": limit, "periodSeconds": window.as_secs()},
                },
            }))?;
            Api::<DynamicObject>::namespaced_with(
                self.admin.clone(),
                &ns,
                &ours_resource("OAuthProvider"),
            )
            .create(&PostParams::default(), &provider)
            .await?;
            self.create_apps(Kind::Clerk, &ns, n, "clerk").await?;
            // Provider requests are counted at the emulator.
            let name = format!("clerk-{instance}");
            let (mut figures, mut op, _) = self
                .converge(
                    &format!("oauth-operator, Clerk {instance}"),
                    Kind::Clerk,
                    &ns,
                    n,
                    None,
                    || self.start_ours(&name, Some(&ns), &[]),
                )
                .await?;
            op.stop();
            let records = emulator.requests();
            let throttled = records.iter().filter(|r| r.status == Some(429)).count();
            let seconds = figures["seconds"].as_f64().unwrap_or(0.0);
            // Clerk takes two requests per application: the create (under a name that carries
            // the application's uid, so that a create whose answer is lost is found again) and
            // the rename to the display name once the id is recorded. The minimum is those at
            // the limit's rate; the bare floor is the creates alone.
            let rate = f64::from(limit) / window.as_secs_f64();
            let minimum = 2.0 * n as f64 / rate;
            figures["minimum_seconds_creates_only"] = json!(round2(n as f64 / rate));
            figures["instance"] = json!(instance);
            figures["limit"] = json!(format!("{limit}/10s"));
            figures["provider_requests_per_app"] = json!(round2(records.len() as f64 / n as f64));
            figures["responses_429"] = json!(throttled);
            figures["minimum_seconds"] = json!(round2(minimum));
            figures["vs_minimum"] = ratio(seconds, minimum);
            runs.push(figures);
        }
        Ok(json!({"runs": runs}))
    }
}

/// One client created straight at Hydra's admin API, as the floors do (`host`: its redirect
/// URI's first label).
async fn hydra_create(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    secret: &str,
    host: &str,
) -> Result<()> {
    let body = json!({
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uris": [format!("https://{host}.example.com/callback")],
        "grant_types": ["client_credentials"],
    });
    let response = http.post(url).json(&body).send().await?;
    if !response.status().is_success() {
        bail!("Hydra answered {}", response.status());
    }
    Ok(())
}

/// The apiserver requests per client of a floor with Kubernetes in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KubeFloor {
    /// The two writes that make a client usable: its Secret and a Ready status.
    SecretAndStatus,
    /// hydra-maester's three writes: the finalizer, the Secret, the status.
    MaesterWrites,
    /// This operator's registration at Hydra, request for request: the finalizer, two reads
    /// (the Secret, the staged copy), the status naming the client before the create, the
    /// Secret, the Ready status, the `Registered` event.
    OurProtocol,
}

impl KubeFloor {
    fn key(self) -> &'static str {
        match self {
            KubeFloor::SecretAndStatus => "with_secret_and_status",
            KubeFloor::MaesterWrites => "with_maester_writes",
            KubeFloor::OurProtocol => "with_our_protocol",
        }
    }
}

/// The PNG of applications Ready over time.
mod plot {
    use anyhow::{Context as _, Result, anyhow};
    use plotters::prelude::*;
    use serde_json::Value;
    use std::path::Path;

    const FONTS: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];

    pub fn ready_over_time(curves: &Value, path: &Path) -> Result<()> {
        let curves = curves.as_object().context("curves: not an object")?;
        let font = FONTS
            .iter()
            .find_map(|f| std::fs::read(f).ok())
            .context("no TrueType font found (DejaVu Sans or Liberation Sans)")?;
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| anyhow!("the font could not be loaded"))?;
        let series: Vec<(&String, Vec<f64>)> = curves
            .iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let max_t = series
            .iter()
            .flat_map(|(_, v)| v.last().copied())
            .fold(1.0, f64::max);
        let max_n = series
            .iter()
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Applications Ready over time (N = {max_n})"),
                ("sans-serif", 24),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_t * 1.05, 0usize..max_n + max_n / 20)?;
        chart
            .configure_mesh()
            .x_desc("seconds after the operator started")
            .y_desc("Ready")
            .draw()?;
        for (i, (label, times)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut points = vec![(0.0, 0usize)];
            points.extend(times.iter().enumerate().map(|(k, t)| (*t, k + 1)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
