//! HAProxy for the balancer tests: the operator's own `deploy/haproxy.cfg`
//! rendered with the test's addresses ([`render`], [`render_for`]), started in the foreground
//! ([`start`]), and ready once its stats say every gateway is up
//! ([`servers_up`], also how a test waits for a gateway to be marked down).

use crate::{Launch, LaunchError, Process, Ready};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where Debian's `haproxy` package installs it (`scripts/test` installs it).
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// Between two reads of the stats page while servers change state.
const STATS_RETRY: Duration = Duration::from_millis(50);
/// Most bytes of a stats page read: a few servers' CSV rows are far smaller.
const STATS_LIMIT: u64 = 1024 * 1024;

/// `template` with every `@NAME@` replaced by its value; an unknown or
/// leftover placeholder is an error naming it.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut text = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("@{name}@");
        if !text.contains(&placeholder) {
            return Err(format!("the template has no {placeholder}"));
        }
        text = text.replace(&placeholder, value);
    }
    let leftover = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let start = line.find('@')?;
            let end = line[start + 1..].find('@')?;
            Some(line[start..start + end + 2].to_owned())
        });
    match leftover {
        Some(placeholder) => Err(format!("no value for {placeholder}")),
        None => Ok(text),
    }
}

/// One gateway as the balancer sees it: where customers connect, and its
/// admin port, whose `GET /readyz` the health checks ask.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Its customer port.
    pub listen: SocketAddr,
    /// Its admin port.
    pub admin: SocketAddr,
}

/// `template` (deploy/haproxy.cfg) for any number of gateways: each
/// `server gw1 … @GATEWAY_1@ …` line becomes one line per gateway (`gwN`,
/// its customer port, and its admin port's `@ADMIN_ADDR_1@` and
/// `@ADMIN_PORT_1@`), other gateways' lines are dropped, then `@LISTEN@` and
/// `@STATS@` are filled in as by [`render`].
pub fn render_for(
    template: &str,
    listen: SocketAddr,
    stats: SocketAddr,
    gateways: &[Backend],
) -> Result<String, String> {
    let mut lines: Vec<String> = Vec::new();
    let mut placed = false;
    for line in template.lines() {
        let is_server = line.trim_start().starts_with("server gw") && line.contains("@GATEWAY_");
        if !is_server {
            lines.push(line.to_owned());
            continue;
        }
        if !line.contains("@GATEWAY_1@") {
            continue;
        }
        for (n, gateway) in gateways.iter().enumerate() {
            let n = n + 1;
            lines.push(
                line.replacen("server gw1 ", &format!("server gw{n} "), 1)
                    .replace("@GATEWAY_1@", &gateway.listen.to_string())
                    .replace("@ADMIN_ADDR_1@", &gateway.admin.ip().to_string())
                    .replace("@ADMIN_PORT_1@", &gateway.admin.port().to_string()),
            );
        }
        placed = true;
    }
    if !placed {
        return Err("the template has no `server gw1 @GATEWAY_1@` line".into());
    }
    lines.push(String::new());
    render(
        &lines.join("\n"),
        &[("LISTEN", listen.to_string()), ("STATS", stats.to_string())],
    )
}

/// Checks `config` (`haproxy -c`), then starts HAProxy on it in the
/// foreground, ready when its stats listener on `stats` accepts.
pub async fn start(
    config: &Path,
    stats: SocketAddr,
    bound: Duration,
) -> Result<Process, LaunchError> {
    let checked = Launch::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .run(bound)
        .await?;
    if !checked.status.success() {
        return Err(LaunchError::Ended {
            name: "haproxy".into(),
            what: format!("accepting {} ({})", config.display(), checked.status),
            tail: format!("{}\n{}", checked.stdout, checked.stderr),
        });
    }
    Launch::new(HAPROXY)
        .arg("-db")
        .arg("-f")
        .arg(config)
        .start(Ready::Listening(stats), bound)
        .await
}

/// Waits at most `bound` until exactly `up` servers of `backend` are `UP` in
/// the CSV of the stats page on `stats` (HAProxy's `/stats;csv`).
pub async fn servers_up(
    process: &mut Process,
    stats: SocketAddr,
    backend: &str,
    up: usize,
    bound: Duration,
) -> Result<(), LaunchError> {
    servers_in(process, stats, backend, "UP", up, bound).await
}

/// Waits at most `bound` until exactly `count` servers of `backend` have the
/// status `status` (`UP`, `DOWN`; a server on its way reads `UP 1/2` or
/// `DOWN 1/2`, neither).
pub async fn servers_in(
    process: &mut Process,
    stats: SocketAddr,
    backend: &str,
    status: &str,
    count: usize,
    bound: Duration,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + bound;
    let mut last = String::new();
    loop {
        if let Ok(Ok(csv)) = tokio::time::timeout_at(deadline.into(), stats_csv(stats)).await {
            if count_in(&csv, backend, status) == count {
                return Ok(());
            }
            last = csv;
        }
        if let Some(ended) = process.exit_status() {
            return Err(LaunchError::Ended {
                name: process.name().to_owned(),
                what: format!("{count} servers {status} ({ended})"),
                tail: process.tail(),
            });
        }
        if tokio::time::timeout_at(deadline.into(), tokio::time::sleep(STATS_RETRY))
            .await
            .is_err()
        {
            return Err(LaunchError::Timeout {
                name: process.name().to_owned(),
                what: format!("{count} servers of {backend} {status}; last stats:\n{last}"),
                bound,
                tail: process.tail(),
            });
        }
    }
}

/// Servers of `backend` whose `status` column reads `status`.
fn count_in(csv: &str, backend: &str, status: &str) -> usize {
    // The page may come chunked: chunk sizes are lines of their own, before
    // the header line and matching no backend after it.
    let mut lines = csv.lines().skip_while(|line| !line.starts_with("# "));
    let Some(header) = lines.next() else {
        return 0;
    };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let at = |name: &str| columns.iter().position(|column| *column == name);
    let (Some(proxy), Some(server), Some(column)) = (at("pxname"), at("svname"), at("status"))
    else {
        return 0;
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|row| {
            row.get(proxy) == Some(&backend)
                && !matches!(row.get(server), Some(&"FRONTEND") | Some(&"BACKEND"))
                && row.get(column) == Some(&status)
        })
        .count()
}

/// One read of the stats page as CSV.
async fn stats_csv(stats: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(stats).await?;
    stream
        .write_all(b"GET /stats;csv HTTP/1.0\r\nHost: haproxy\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(STATS_LIMIT)
        .read_to_end(&mut answer)
        .await?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_names_what_is_missing() {
        let template = "# @COMMENT@ is fine\nbind @LISTEN@\nserver a @GATEWAY_1@\n";
        let values = [("LISTEN", "127.0.0.1:1".to_owned())];
        assert_eq!(
            render(template, &values).unwrap_err(),
            "no value for @GATEWAY_1@"
        );
        let values = [
            ("LISTEN", "127.0.0.1:1".to_owned()),
            ("GATEWAY_1", "127.0.0.1:2".to_owned()),
        ];
        assert!(render(template, &values)
            .unwrap()
            .contains("server a 127.0.0.1:2"));
        assert!(render(template, &[("NOPE", String::new())]).is_err());
    }

    #[test]
    fn renders_a_server_line_per_gateway_in_every_backend() {
        let template = "bind @LISTEN@\nstats @STATS@\nbackend a\n    server gw1 @GATEWAY_1@ addr @ADMIN_ADDR_1@ port @ADMIN_PORT_1@\n    server gw2 @GATEWAY_2@ addr @ADMIN_ADDR_2@ port @ADMIN_PORT_2@\nbackend b\n    server gw1 @GATEWAY_1@ backup\n    server gw2 @GATEWAY_2@ backup\n";
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let gateways = [1, 2, 3].map(|n| Backend {
            listen: addr(8000 + n),
            admin: addr(9000 + n),
        });
        let text = render_for(template, addr(1), addr(2), &gateways).unwrap();
        assert!(text.contains("    server gw3 127.0.0.1:8003 addr 127.0.0.1 port 9003\n"));
        assert!(text.contains("    server gw3 127.0.0.1:8003 backup\n"));
        assert_eq!(text.matches("server gw").count(), 6, "{text}");
    }

    #[test]
    fn counts_servers_up() {
        let csv = "1A8\r\n# pxname,svname,status,\ngateways,gw1,UP,\ngateways,gw2,DOWN,\ngateways,BACKEND,UP,\nother,x,UP,\n";
        assert_eq!(count_in(csv, "gateways", "UP"), 1);
        assert_eq!(count_in(csv, "gateways", "DOWN"), 1);
    }
}
