//! Issue 34, the volunteers' Debian package: `deploy/debian/build` packs the
//! debug `agent` this test run built; the package's metadata and contents are
//! checked (`dpkg-deb --info`, `--contents`); it is unpacked into a temporary
//! root (`dpkg-deb -x`) where the unit is parsed and verified
//! (`systemd-analyze verify`, and `security --offline` for its exposure), and
//! the unpacked binary checks the packaged agent.toml; then dpkg installs and
//! purges it in another temporary root (`dpkg --root`, maintainer scripts run
//! with `DPKG_ROOT`), which runs postinst twice (the user and the state
//! directory created once), registers the conffile, and purges the state.

mod common;

use common::WAIT;
use exitpool_launcher::{Finished, Launch};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const UNIT: &str = "usr/lib/systemd/system/exitpool-agent.service";
const CONFIG: &str = "etc/exitpool/agent.toml";
const BINARY: &str = "usr/bin/exitpool-agent";

async fn run(program: &str, args: &[&str]) -> Finished {
    let result = Launch::new(program)
        .args(args)
        .run(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(result.status.success(), "{program} {args:?}: {result:?}");
    result
}

/// Builds the package from the test run's own agent binary.
async fn build(out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("deploy/debian/build");
    let built = run(
        script.to_str().unwrap(),
        &[
            "--binary",
            env!("CARGO_BIN_EXE_agent"),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    PathBuf::from(built.stdout.trim())
}

/// `[Section]` → key → values, as systemd reads a unit (continuation lines
/// joined, comments dropped).
fn parse_unit(text: &str) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut sections: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut section = String::new();
    let joined = text.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        sections
            .entry(section.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

#[tokio::test]
async fn the_package_builds_installs_verifies_and_purges() {
    let work = tempfile::tempdir().unwrap();
    let deb = build(work.path()).await;
    let arch = run("dpkg", &["--print-architecture"]).await.stdout;
    let name = deb.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("exitpool-agent_") && name.ends_with(&format!("_{}.deb", arch.trim())),
        "{name}"
    );

    // Metadata.
    let info = run("dpkg-deb", &["--info", deb.to_str().unwrap()])
        .await
        .stdout;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "exitpool-agent");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(field("Depends").contains("libc6 (>= 2."), "{info}");
    assert!(field("Depends").contains("passwd"), "{info}");
    assert!(field("Maintainer").contains('<'), "{info}");
    assert!(field("Installed-Size").parse::<u64>().unwrap() > 1000);
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(info.contains(script), "no {script} in {info}");
    }

    // Contents: the binary, the unit, the conffile (0640, it may hold the token).
    let contents = run("dpkg-deb", &["--contents", deb.to_str().unwrap()])
        .await
        .stdout;
    let entry = |path: &str| {
        contents
            .lines()
            .find(|line| line.ends_with(&format!("./{path}")))
            .unwrap_or_else(|| panic!("no {path} in {contents}"))
            .to_owned()
    };
    assert!(entry(BINARY).starts_with("-rwxr-xr-x root/root"));
    assert!(entry(UNIT).starts_with("-rw-r--r-- root/root"));
    assert!(entry(CONFIG).starts_with("-rw-r----- root/root"));
    entry("usr/share/doc/exitpool-agent/copyright");

    // Unpacked: the unit as systemd reads it.
    let unpacked = work.path().join("unpacked");
    run(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), unpacked.to_str().unwrap()],
    )
    .await;
    let unit_text = std::fs::read_to_string(unpacked.join(UNIT)).unwrap();
    let unit = parse_unit(&unit_text);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        match service.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{key}: {other:?}"),
        }
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/exitpool-agent --config /etc/exitpool/agent.toml"
    );
    assert_eq!(
        (one("User"), one("Group")),
        ("exitpool-agent", "exitpool-agent")
    );
    assert_eq!(one("StateDirectory"), "exitpool-agent");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);

    // systemd's own check, on a copy whose ExecStart is the unpacked binary
    // (verify checks that the command exists), and its exposure score.
    let verify_dir = work.path().join("verify");
    std::fs::create_dir(&verify_dir).unwrap();
    let copy = verify_dir.join("exitpool-agent.service");
    let binary = unpacked.join(BINARY);
    std::fs::write(
        &copy,
        unit_text.replace("/usr/bin/exitpool-agent", binary.to_str().unwrap()),
    )
    .unwrap();
    run(
        "systemd-analyze",
        &["verify", "--man=no", copy.to_str().unwrap()],
    )
    .await;
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", copy.to_str().unwrap()],
    )
    .await
    .stdout;
    let exposure: f64 = security
        .lines()
        .find_map(|line| line.split("exitpool-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {security}"));
    assert!(exposure <= 2.0, "exposure {exposure}: {security}");

    // The packaged example, as shipped, fails only on what the volunteer
    // must fill in; with those filled in, and every commented example key
    // enabled, the unpacked binary accepts it.
    let example = std::fs::read_to_string(unpacked.join(CONFIG)).unwrap();
    let check = |text: &str, name: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let binary = binary.clone();
        async move {
            Launch::new(binary)
                .arg("check-config")
                .arg(&path)
                .env_remove("EXITPOOL_AGENT_TOKEN")
                .run(WAIT)
                .await
                .unwrap()
        }
    };
    let shipped = check(&example, "shipped.toml").await;
    assert!(!shipped.status.success());
    let keys: Vec<&str> = shipped
        .stderr
        .lines()
        .filter_map(|line| line.split("key `").nth(1)?.split('`').next())
        .collect();
    assert_eq!(keys, ["pin", "token", "consent"], "{shipped:?}");
    let filled = example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
            Some("") => "",
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "REPLACE-WITH-THE-PIN-FROM-YOUR-OPERATOR",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )
        .replace("consent = false", "consent = true");
    assert!(filled.contains("[[schedule.window]]") && filled.contains("\ntoken = "));
    let result = check(&filled, "filled.toml").await;
    assert!(result.status.success(), "{result:?}");
    assert_eq!(result.stdout.trim(), "ok");

    // Installed into a temporary root by dpkg itself, twice (postinst is
    // idempotent), then purged.
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for (file, line) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("group", "root:x:0:\n"),
        ("shadow", "root:*:20000:0:99999:7:::\n"),
        ("gshadow", "root:*::\n"),
    ] {
        std::fs::write(root.join("etc").join(file), line).unwrap();
    }
    let dpkg = |action: &'static str| {
        let root = root.to_str().unwrap().to_owned();
        let deb = deb.to_str().unwrap().to_owned();
        async move {
            let mut args = vec![
                format!("--root={root}"),
                "--force-script-chrootless".into(),
                "--force-depends".into(),
                "--log=/dev/null".into(),
                action.into(),
            ];
            args.push(if action == "--purge" {
                "exitpool-agent".into()
            } else {
                deb
            });
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("dpkg", &args).await
        }
    };
    if !nix_is_root() {
        panic!("installing into a temporary root needs root (as CI and scripts/test run)");
    }
    dpkg("--install").await;
    dpkg("--install").await;
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let users: Vec<&str> = passwd
        .lines()
        .filter(|line| line.starts_with("exitpool-agent:"))
        .collect();
    assert_eq!(users.len(), 1, "{passwd}");
    let fields: Vec<&str> = users[0].split(':').collect();
    assert_eq!(fields[5], "/var/lib/exitpool-agent");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {uid}");
    let state = std::fs::metadata(root.join("var/lib/exitpool-agent")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (uid, 0o700));
    let config = std::fs::metadata(root.join(CONFIG)).unwrap();
    assert_eq!((config.uid(), config.mode() & 0o777), (0, 0o640));
    let gid: u32 = fields[3].parse().unwrap();
    assert_eq!(config.gid(), gid, "the service's group reads the config");
    let status = run(
        "dpkg-query",
        &[
            &format!("--admindir={}", root.join("var/lib/dpkg").display()),
            "-s",
            "exitpool-agent",
        ],
    )
    .await
    .stdout;
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("Conffiles:\n /etc/exitpool/agent.toml "),
        "{status}"
    );

    dpkg("--purge").await;
    assert!(!root.join("var/lib/exitpool-agent").exists());
    assert!(!root.join(CONFIG).exists());
    assert!(!root.join(BINARY).exists());
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
