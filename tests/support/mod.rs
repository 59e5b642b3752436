//! Helpers for tests with real nodes on 127.0.0.1: polling with a deadline, a cluster of
//! in-process nodes, and a minimal HTTP/1.1 client.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tidemark::node::views::At;
use tidemark::node::{Node, NodeConfig, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// `tidemark_<name> <value>` as the metrics text gives it (`name` may carry labels).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("tidemark_{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// [`metric`] of an in-process node.
pub fn node_metric(handle: &NodeHandle, name: &str) -> Option<u64> {
    metric(&handle.metrics().encode(), name)
}

/// Polls `check` every 100 ms until it returns true or `within` passes; returns whether it
/// did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a node on loopback in `dir`, joining through `bootstrap` if given.
pub async fn start_node(dir: &Path, bootstrap: Option<&Node>) -> Node {
    start_node_with(dir, bootstrap, |_| {}).await
}

/// Like [`start_node`], with the config changed by `adjust` first.
pub async fn start_node_with(
    dir: &Path,
    bootstrap: Option<&Node>,
    adjust: impl FnOnce(&mut NodeConfig),
) -> Node {
    let mut config = NodeConfig::local(dir);
    if let Some(b) = bootstrap {
        config.bootstrap = b.listen_addrs().to_vec();
    }
    adjust(&mut config);
    Node::start(config).await.expect("node starts")
}

/// Writes `count` keys `prefix<i>` with values of `value_bytes` bytes, many at a time.
pub async fn fill(handle: &NodeHandle, prefix: &str, count: usize, value_bytes: usize) {
    use futures::StreamExt;
    let value = "x".repeat(value_bytes);
    futures::stream::iter(0..count)
        .map(|i| {
            let key = format!("{prefix}{i:08}");
            let value = value.clone();
            async move {
                handle
                    .put(&key, Some(&value))
                    .await
                    .expect("write accepted")
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// Starts `n` nodes, every one joining through the first.
pub async fn cluster(dir: &Path, n: usize) -> Vec<Node> {
    let mut nodes = vec![start_node(&dir.join("node0"), None).await];
    for i in 1..n {
        let node = start_node(&dir.join(format!("node{i}")), Some(&nodes[0])).await;
        nodes.push(node);
    }
    nodes
}

/// Asserts that every handle becomes a member of an `n`-node network within `within`.
pub async fn wait_members(handles: &[NodeHandle], n: usize, within: Duration) {
    assert!(
        eventually(within, || async {
            for h in handles {
                match h.status().await {
                    Ok(s) if s.phase == "member" && s.members == n => {}
                    _ => return false,
                }
            }
            true
        })
        .await,
        "every node becomes a member of a {n}-node network"
    );
}

/// Whether every handle is a member of a network of `members`, with its snapshot point
/// equal to what it applied, `ops` ops in all, and the same stable digest and state.
pub async fn converged(handles: &[NodeHandle], members: usize, ops: u64) -> bool {
    let mut first = None;
    for h in handles {
        let Ok(status) = h.status().await else {
            return false;
        };
        let applied: u64 = status.applied.values().sum();
        if status.phase != "member"
            || status.members != members
            || applied != ops
            || status.snapshot_point != status.applied
        {
            return false;
        }
        let Ok(state) = h.state(At::Snapshot).await else {
            return false;
        };
        match &first {
            None => first = Some(state),
            Some(f) if *f != state => return false,
            Some(_) => {}
        }
    }
    true
}

/// A `/proc/<pid>/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`), if the process lives.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A response: status code and body.
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`.
/// Whether, within `within`, every node behind `apis` reports itself a member of a view of
/// `members` members (`GET /v1/status`).
pub async fn all_members(apis: &[SocketAddr], members: u64, within: Duration) -> bool {
    eventually(within, || async {
        for api in apis {
            let status = http(*api, "GET", "/v1/status", None).await.json();
            if status["phase"] != "member" || status["members"] != members {
                return false;
            }
        }
        true
    })
    .await
}

pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    http_with(addr, method, path, body, &[]).await
}

/// Like [`http`], with extra header lines (`"Name: value"`).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> HttpResponse {
    try_http_with(addr, method, path, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// Like [`http`], but a request that gets no HTTP answer (no connection, a broken one, no
/// status line) is an error, not a panic: for load generators, which count it.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<HttpResponse, String> {
    try_http_with(addr, method, path, body, &[]).await
}

async fn try_http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> Result<HttpResponse, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A `tidemark node` child, killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub api: SocketAddr,
    pub peer_id: String,
    pub listen: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tidemark node --data-dir DIR --listen <loopback:0> --api <loopback:0> EXTRA...`.
pub fn spawn_with(data_dir: &Path, extra: &[&str], stderr: Stdio) -> NodeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command
        .args(["node", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(extra)
        .stderr(stderr);
    spawn_command(command)
}

/// Runs `command` (a `tidemark node ...` made by the caller, with its own arguments and
/// environment) and reads the line the node prints on start.
pub fn spawn_command(mut command: Command) -> NodeProcess {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tidemark node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the node prints where it listens");
    let info: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let api = info["api"]
        .as_str()
        .and_then(|a| a.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .expect("an API address");
    NodeProcess {
        child,
        api,
        peer_id: info["peer_id"].as_str().unwrap().to_string(),
        listen: info["listen_addrs"][0].as_str().unwrap().to_string(),
    }
}

/// Whether the test runs as root (tests that mount file systems or build network
/// namespaces need it; CI runs as root). Read from /proc: no libc call needed.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
