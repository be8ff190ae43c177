//! swarm's dashboard check (`--swarm-dashboard N`): with the QUIC pool joined,
//! N customer connections are held open through the gateway to a target here
//! that holds them, then curl signs in to the admin port's dashboard and times
//! each API call its pages make (median and slowest of [`TIMES`]), and the
//! gateway's CPU is measured while each page polls as the browser does,
//! against the same window without polling.

use crate::client::{join_all, open};
use crate::launch::{which, GatewayProcess};
use crate::measure::{cpu_seconds, median};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How many times each call is timed.
const TIMES: usize = 10;
/// Longest a curl call may take.
const CURL_BOUND: Duration = Duration::from_secs(20);
/// Longest the target holds a connection (the scenario ends well before).
const HOLD: Duration = Duration::from_secs(1800);

/// A page and what it asks for, how often (the intervals in
/// gateway/assets/dashboard/pages.js).
const PAGES: [(&str, &str, Duration); 3] = [
    (
        "overview",
        "/dashboard/api/overview",
        Duration::from_secs(5),
    ),
    (
        "exits",
        "/dashboard/api/exits?limit=50",
        Duration::from_secs(10),
    ),
    (
        "live",
        "/dashboard/api/v1/connections?limit=500",
        Duration::from_secs(1),
    ),
];

pub async fn measure(
    gw: &GatewayProcess,
    agents: usize,
    conns: usize,
    window: Duration,
    report: &mut Report,
) -> Result<()> {
    let curl = which("curl").context("curl is not installed")?;
    let (target, mut holder) = holding_target().await?;
    let held = hold_connections(gw, target, conns).await?;
    let jar = tempfile::NamedTempFile::new()?;
    let admin = Curl {
        curl,
        base: format!("http://{}", gw.admin()),
        jar: jar.path().to_owned(),
    };
    admin.sign_in().await?;
    // The gateway lists the connections once each has its exit.
    let listed = wait_listed(&admin, conns).await?;
    eprintln!("   dashboard: {listed} live connections listed, {agents} agents");
    let what = format!("dashboard, {agents} agents, {listed} live conns");
    let last = agents.saturating_sub(50);
    let calls = [
        ("the app's page", "/dashboard/".to_owned()),
        ("overview", "/dashboard/api/overview".to_owned()),
        (
            "exits, first 50",
            "/dashboard/api/exits?limit=50".to_owned(),
        ),
        (
            "exits, last 50",
            format!("/dashboard/api/exits?limit=50&offset={last}"),
        ),
        (
            "exits, filtered (no match)",
            "/dashboard/api/exits?transport=tcp&q=nothing&limit=50".to_owned(),
        ),
        (
            "live connections (the Live page)",
            "/dashboard/api/v1/connections?limit=500".to_owned(),
        ),
        (
            "live connections of one customer",
            format!(
                "/dashboard/api/v1/connections?customer={}&limit=500",
                crate::launch::USER
            ),
        ),
        (
            "banned exits",
            "/dashboard/api/v1/exits?banned=true".to_owned(),
        ),
    ];
    for (name, path) in calls {
        let mut times = Vec::with_capacity(TIMES);
        let mut size = 0;
        for _ in 0..TIMES {
            let (took, bytes) = admin.get(&path).await?;
            times.push(took.as_secs_f64() * 1000.0);
            size = bytes;
        }
        let slowest = times.iter().cloned().fold(0.0, f64::max);
        let med = median(times);
        eprintln!("   {name}: {med:.1} ms median, {slowest:.1} ms slowest, {size} B");
        for (metric, unit, value) in [
            (format!("{what}: {name}, median"), "ms", med),
            (format!("{what}: {name}, slowest"), "ms", slowest),
            (format!("{what}: {name}, answer"), "bytes", size as f64),
        ] {
            report.row("swarm", metric, unit, None, Some(value), None);
        }
    }
    let pid = gw.pid();
    let off = cpu_over(pid, window, None).await?;
    report.row(
        "swarm",
        format!("{what}: gateway CPU, no page polling"),
        "% core",
        None,
        Some(off),
        None,
    );
    for page in PAGES {
        let on = cpu_over(pid, window, Some((&admin, page.1, page.2))).await?;
        eprintln!(
            "   gateway CPU with the {} page polling: {on:.1} % (none: {off:.1} %)",
            page.0
        );
        report.row(
            "swarm",
            format!(
                "{what}: gateway CPU, the {} page polling every {} s",
                page.0,
                page.2.as_secs()
            ),
            "% core",
            None,
            Some(on),
            None,
        );
    }
    report.notes.push(format!("swarm, dashboard: curl signed in with a session cookie, each call timed {TIMES} times (curl's time_total, loopback); CPU = the gateway's utime+stime over {:.0} s, with one page's polling (overview every 5 s, exits every 10 s, Live every 1 s) and without; {conns} customer connections held open through the QUIC agents to a target in this process", window.as_secs_f64()));
    drop(held);
    holder.abort_all();
    Ok(())
}

/// The gateway's CPU (% of a core) over `window`, while `poll` (client,
/// path, period) asks for a path as a page does.
async fn cpu_over(
    pid: u32,
    window: Duration,
    poll: Option<(&Curl, &str, Duration)>,
) -> Result<f64> {
    let cpu0 = cpu_seconds(Some(pid))?;
    let end = tokio::time::Instant::now() + window;
    match poll {
        None => tokio::time::sleep_until(end).await,
        Some((curl, path, every)) => {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    _ = tick.tick() => { curl.get(path).await?; }
                }
            }
        }
    }
    Ok((cpu_seconds(Some(pid))? - cpu0) / window.as_secs_f64() * 100.0)
}

/// curl against the admin port, with the session cookie in `jar`.
struct Curl {
    curl: PathBuf,
    base: String,
    jar: PathBuf,
}

impl Curl {
    /// Opens a session (a port without an admin token takes any token).
    async fn sign_in(&self) -> Result<()> {
        let out = self
            .run(&[
                "-c",
                &path_arg(&self.jar)?,
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"token":"loadtest"}"#,
                &format!("{}/dashboard/api/session", self.base),
            ])
            .await?;
        if !out.starts_with("200 ") {
            bail!("dashboard sign-in answered {out}");
        }
        Ok(())
    }

    /// GETs `path`: how long curl took and the answer's size (a status other
    /// than 200 is an error).
    async fn get(&self, path: &str) -> Result<(Duration, u64)> {
        let out = self
            .run(&["-b", &path_arg(&self.jar)?, &format!("{}{path}", self.base)])
            .await?;
        let fields: Vec<&str> = out.split_whitespace().collect();
        let [status, size, secs] = fields[..] else {
            bail!("curl printed {out:?}");
        };
        if status != "200" {
            bail!("GET {path} answered {status}");
        }
        Ok((
            Duration::from_secs_f64(secs.parse().context("curl's time_total")?),
            size.parse().context("curl's size_download")?,
        ))
    }

    /// Runs curl with `args`, the body thrown away; returns `status size
    /// seconds`.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let mut command = tokio::process::Command::new(&self.curl);
        command
            .args(["-s", "-o", "/dev/null", "--max-time", "15"])
            .args(["-w", "%{http_code} %{size_download} %{time_total}"])
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(CURL_BOUND, command.output())
            .await
            .context("curl timed out")??;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The live connections the gateway lists.
    async fn listed(&self) -> Result<u64> {
        let mut command = tokio::process::Command::new(&self.curl);
        command
            .args(["-s", "--max-time", "15", "-b", &path_arg(&self.jar)?])
            .arg(format!(
                "{}/dashboard/api/v1/connections?limit=1",
                self.base
            ))
            .kill_on_drop(true);
        let output = tokio::time::timeout(CURL_BOUND, command.output())
            .await
            .context("curl timed out")??;
        let answer: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("the connection list is not JSON")?;
        answer["total"]
            .as_u64()
            .context("the connection list has no total")
    }
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .context("the cookie jar's path is not UTF-8")
}

/// Waits until the gateway lists `conns` live connections; returns how many
/// it lists (all, or as many as it did when the bound ran out).
async fn wait_listed(admin: &Curl, conns: usize) -> Result<u64> {
    let started = Instant::now();
    loop {
        let listed = admin.listed().await?;
        if listed >= conns as u64 || started.elapsed() > Duration::from_secs(30) {
            return Ok(listed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A target that accepts connections and holds each until its client closes
/// (or [`HOLD`] passes); its tasks end when the set is dropped or aborted.
async fn holding_target() -> Result<(SocketAddr, JoinSet<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut set = JoinSet::new();
    set.spawn(async move {
        let mut held = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            held.spawn(async move {
                let mut buf = [0u8; 512];
                let read = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(HOLD, read).await;
            });
            // Finished holds are reaped, so the set stays as large as what is held.
            while held.try_join_next().is_some() {}
        }
    });
    Ok((addr, set))
}

/// `conns` CONNECT tunnels through the gateway's customer port to `target`,
/// opened 50 at a time; all must open.
async fn hold_connections(
    gw: &GatewayProcess,
    target: SocketAddr,
    conns: usize,
) -> Result<Vec<tokio::net::TcpStream>> {
    let path = gw.path();
    let mut held = Vec::with_capacity(conns);
    for first in (0..conns).step_by(50) {
        let batch = (first..conns.min(first + 50)).map(|_| {
            let path = path.clone();
            async move { open(&path, target).await }
        });
        for opened in join_all(batch).await {
            match opened {
                Ok(stream) => held.push(stream),
                Err(error) => bail!(
                    "customer connection {} of {conns}: {}",
                    held.len() + 1,
                    error.kind()
                ),
            }
        }
    }
    Ok(held)
}
