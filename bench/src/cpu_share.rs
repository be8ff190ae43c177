//! Equal CPU shares for the processes of a run, as if each had a machine of
//! its own: one cgroup per process under the kernel's `cpu` controller, with a
//! CFS bandwidth quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`).
//!
//! On a small machine every process of a path shares the same cores, so a
//! path's throughput is the sum of its processes' CPU; across machines it is
//! its busiest process's. Capping each process at the same share measures the
//! latter on one box. Needs root (or a delegated cgroup tree).

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// The quota's period. The kernel's default (100 ms) would stop a capped
/// process for tens of milliseconds at a time, longer than its socket buffers
/// cover at hundreds of MB/s, so the pipeline would stall on the quota's
/// rhythm rather than on CPU; 10 ms keeps each pause short.
pub const PERIOD_US: u64 = 10_000;

/// Where the `cpu` controller is mounted, and how it takes a quota.
#[derive(Debug, Clone)]
enum Hierarchy {
    /// cgroup v2: groups under the root, `cpu.max`.
    Unified(PathBuf),
    /// cgroup v1: groups under the `cpu` hierarchy's root, `cpu.cfs_*`.
    Legacy(PathBuf),
}

impl Hierarchy {
    fn find() -> Result<Hierarchy> {
        let unified = Path::new("/sys/fs/cgroup");
        if fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"))
        {
            return Ok(Hierarchy::Unified(unified.to_owned()));
        }
        for legacy in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
            let legacy = Path::new(legacy);
            if legacy.join("cpu.cfs_quota_us").exists() {
                return Ok(Hierarchy::Legacy(legacy.to_owned()));
            }
        }
        bail!("no cgroup `cpu` controller under /sys/fs/cgroup")
    }

    fn root(&self) -> &Path {
        match self {
            Hierarchy::Unified(root) | Hierarchy::Legacy(root) => root,
        }
    }

    /// The group `pid` is in now, to put it back there.
    fn group_of(&self, pid: u32) -> Result<PathBuf> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
        let relative = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                let ours = match self {
                    Hierarchy::Unified(_) => controllers.is_empty(),
                    Hierarchy::Legacy(_) => controllers.split(',').any(|c| c == "cpu"),
                };
                ours.then_some(path)
            })
            .next()
            .with_context(|| format!("process {pid} is in no `cpu` cgroup"))?;
        Ok(self.root().join(relative.trim_start_matches('/')))
    }

    fn set_quota(&self, group: &Path, quota_us: u64) -> Result<()> {
        match self {
            Hierarchy::Unified(_) => {
                write(&group.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))
            }
            Hierarchy::Legacy(_) => {
                write(&group.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&group.join("cpu.cfs_quota_us"), &quota_us.to_string())
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// Processes held at one CPU share each until this is dropped, when they go
/// back to the groups they came from and the groups are removed.
#[derive(Debug)]
pub struct CpuShares {
    hierarchy: Hierarchy,
    /// Each capped process, its own group and the group it came from.
    capped: Vec<(u32, PathBuf, PathBuf)>,
}

impl CpuShares {
    /// Caps each of `pids` (every thread of it) at `share` of one core.
    pub fn apply(share: f64, pids: &[u32]) -> Result<CpuShares> {
        anyhow::ensure!(
            share > 0.0 && share <= MAX_SHARE,
            "a CPU share is above 0 and at most {MAX_SHARE} cores, not {share}"
        );
        CpuShares::cap(share, pids).context("CPU quotas need root and the cgroup `cpu` controller")
    }

    fn cap(share: f64, pids: &[u32]) -> Result<CpuShares> {
        let hierarchy = Hierarchy::find()?;
        if let Hierarchy::Unified(root) = &hierarchy {
            write(&root.join("cgroup.subtree_control"), "+cpu")?;
        }
        // The kernel takes no quota under 1 ms.
        let quota_us = ((share * PERIOD_US as f64) as u64).max(1_000);
        let mut shares = CpuShares {
            hierarchy,
            capped: Vec::with_capacity(pids.len()),
        };
        for &pid in pids {
            let home = shares.hierarchy.group_of(pid)?;
            let group = shares
                .hierarchy
                .root()
                .join(format!("exitpool-loadtest-{}-{pid}", std::process::id()));
            fs::create_dir(&group).with_context(|| format!("creating {}", group.display()))?;
            // Recorded before anything can fail, so dropping removes it.
            shares.capped.push((pid, group.clone(), home));
            shares.hierarchy.set_quota(&group, quota_us)?;
            write(&group.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(shares)
    }
}

impl Drop for CpuShares {
    fn drop(&mut self) {
        for (pid, group, home) in self.capped.drain(..) {
            // A process that has ended has nothing to move back.
            let _ = fs::write(home.join("cgroup.procs"), pid.to_string());
            if let Err(error) = fs::remove_dir(&group) {
                eprintln!("loadtest: could not remove {}: {error}", group.display());
            }
        }
    }
}

/// Most cores one process may be given; more is a typo.
const MAX_SHARE: f64 = 64.0;

/// `--fleet-cpu-share`: 0 (no capped pass) up to [`MAX_SHARE`] cores.
pub fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=MAX_SHARE).contains(&share) => Ok(share),
        _ => Err(format!(
            "a CPU share is a number of cores from 0 to {MAX_SHARE}, not {text:?}"
        )),
    }
}

/// The share each process gets by default: together the `busy` processes of
/// a path take 90 % of the machine's cores, and none more than one core.
pub fn default_share(busy: usize) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (0.9 * cores / busy.max(1) as f64).min(1.0)
}
