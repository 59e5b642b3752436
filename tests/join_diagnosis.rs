//! What an operator sees when a node cannot listen or cannot join, and when it lost the
//! majority: child processes of the `tidemark` binary on 127.0.0.1, read through their
//! exit code, stderr and `/v1/status`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{eventually, http};

/// A `tidemark node` child whose stderr goes to a file, killed on drop.
struct Running {
    child: Child,
    api: SocketAddr,
    peer_id: String,
    /// The first listen address with its `/p2p` part.
    listen: String,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn status(&self) -> serde_json::Value {
        http(self.api, "GET", "/v1/status", None).await.json()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tidemark node --data-dir DIR --api 127.0.0.1:0 ARGS...` (`--listen` defaults to a free
/// loopback port); waits up to 60 s for its startup line, and panics without one.
fn start(dir: &Path, args: &[&str]) -> Running {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--data-dir"])
        .arg(dir)
        .args(["--api", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn tidemark node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if !line.is_empty() => line,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no startup line within 60 s; stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    let info: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    Running {
        child,
        api: info["api"]
            .as_str()
            .and_then(|a| a.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .expect("an API address"),
        peer_id: info["peer_id"].as_str().unwrap().to_string(),
        listen: info["listen_addrs"][0].as_str().unwrap().to_string(),
        log,
    }
}

/// `addr` without its `/p2p/<peer id>` part.
fn without_p2p(addr: &str) -> String {
    addr.split("/p2p/").next().unwrap().to_string()
}

/// A loopback TCP port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn new_network_key(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("network-key")
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// The `join.dial_failures` entry of `status` for `addr`, if any.
fn dial_failure(status: &serde_json::Value, addr: &str) -> Option<String> {
    status["join"]["dial_failures"]
        .as_array()?
        .iter()
        .find(|f| f["addr"] == addr)
        .and_then(|f| f["reason"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_port_already_listened_on_fails_at_start_with_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(&dir.path().join("a"), &[]);
    let taken = without_p2p(&first.listen);
    let mut second = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--data-dir"])
        .arg(dir.path().join("b"))
        .args(["--listen", &taken, "--api", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(status) = status else {
        let _ = second.kill();
        let _ = second.wait();
        panic!("the second node on {taken} kept running");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&taken), "the address is named: {stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    // the first node still serves
    assert_eq!(first.status().await["phase"], "member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_addresses_nobody_answers_starts_serves_its_api_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let refused = format!("/ip4/127.0.0.1/tcp/{}", closed_port());
    let named = format!("/ip4/127.0.0.1/tcp/{}", closed_port());
    let unsupported = "/ip4/127.0.0.1/udp/4001/quic-v1";
    // without /p2p: the startup line and the API come first all the same
    let a = start(
        &dir.path().join("a"),
        &["--bootstrap", &refused, "--bootstrap", unsupported],
    );
    // with /p2p (a peer id of nobody running)
    let nobody = start(&dir.path().join("nobody"), &[]);
    let named_p2p = format!("{named}/p2p/{}", nobody.peer_id);
    drop(nobody);
    let b = start(&dir.path().join("b"), &["--bootstrap", &named_p2p]);

    let (a_api, refused_ref) = (a.api, &refused);
    let said = eventually(Duration::from_secs(60), || async move {
        let status = http(a_api, "GET", "/v1/status", None).await.json();
        status["phase"] == "joining"
            && dial_failure(&status, refused_ref).is_some_and(|r| r.starts_with("refused"))
            && dial_failure(&status, unsupported).is_some_and(|r| r.starts_with("unsupported"))
    })
    .await;
    let status = a.status().await;
    assert!(said, "the failed dials are in the status: {status}");
    let waiting = status["join"]["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("no bootstrap peer"), "{status}");
    let log = a.log();
    assert!(
        log.lines()
            .any(|l| l.contains("dial failed") && l.contains(&refused) && l.contains("refused")),
        "every failed dial is logged with its address and reason:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("dial failed") && l.contains(unsupported)),
        "{log}"
    );

    let (b_api, named_ref) = (b.api, &named);
    let said = eventually(Duration::from_secs(60), || async move {
        let status = http(b_api, "GET", "/v1/status", None).await.json();
        dial_failure(&status, named_ref).is_some_and(|r| r.starts_with("refused"))
    })
    .await;
    let status = b.status().await;
    assert!(said, "{status}");
    assert!(
        status["join"]["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("no possible sponsor connected")),
        "{status}"
    );
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("dial failed") && l.contains(&named) && l.contains("refused")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_network_key_is_named_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_network_key(dir.path(), "net.key");
    let other = new_network_key(dir.path(), "other.key");
    let founder = start(
        &dir.path().join("a"),
        &["--network-key", key.to_str().unwrap()],
    );
    let joiner = start(
        &dir.path().join("b"),
        &[
            "--bootstrap",
            &founder.listen,
            "--network-key",
            other.to_str().unwrap(),
        ],
    );
    let addr = without_p2p(&founder.listen);
    let (api, addr_ref) = (joiner.api, &addr);
    let said = eventually(Duration::from_secs(60), || async move {
        let status = http(api, "GET", "/v1/status", None).await.json();
        dial_failure(&status, addr_ref).is_some_and(|r| r.contains("network key"))
    })
    .await;
    assert!(said, "{}", joiner.status().await);
    assert_eq!(joiner.status().await["phase"], "joining");
    let seen = eventually(Duration::from_secs(30), || async {
        founder
            .log()
            .lines()
            .any(|l| l.contains("incoming connection failed") && l.contains("network key"))
    })
    .await;
    assert!(seen, "the founder says so too:\n{}", founder.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns4_bootstrap_address_joins_with_and_without_p2p() {
    let dir = tempfile::tempdir().unwrap();
    let founder = start(&dir.path().join("a"), &[]);
    let port = without_p2p(&founder.listen)
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let named = format!("/dns4/localhost/tcp/{port}/p2p/{}", founder.peer_id);
    let plain = format!("/dns4/localhost/tcp/{port}");
    let b = start(&dir.path().join("b"), &["--bootstrap", &named]);
    let c = start(&dir.path().join("c"), &["--bootstrap", &plain]);
    let apis = [founder.api, b.api, c.api];
    let joined = support::all_members(&apis, 3, Duration::from_secs(90)).await;
    assert!(
        joined,
        "b: {}\nc: {}\n{}",
        b.status().await,
        c.status().await,
        c.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_a_lost_majority_says_it_is_isolated_and_names_the_suspects() {
    let dir = tempfile::tempdir().unwrap();
    let survivor = start(&dir.path().join("a"), &[]);
    let b = start(&dir.path().join("b"), &["--bootstrap", &survivor.listen]);
    let c = start(&dir.path().join("c"), &["--bootstrap", &survivor.listen]);
    let apis = [survivor.api, b.api, c.api];
    let joined = support::all_members(&apis, 3, Duration::from_secs(90)).await;
    assert!(joined, "three members");
    // members count a joiner from its grant on; the view admits it once it has reported
    let api = survivor.api;
    let seated = eventually(Duration::from_secs(60), || async move {
        let status = http(api, "GET", "/v1/status", None).await.json();
        status["view"]["members"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    let status = survivor.status().await;
    assert!(seated, "a view of all three: {status}");
    assert_eq!(status["isolated"], false, "{status}");
    assert_eq!(status["suspected"], serde_json::json!([]), "{status}");
    let killed = [b.peer_id.clone(), c.peer_id.clone()];
    drop(b);
    drop(c);
    let killed_ref = &killed;
    let told = eventually(Duration::from_secs(60), || async move {
        let status = http(api, "GET", "/v1/status", None).await.json();
        let suspected: Vec<&str> = status["suspected"]
            .as_array()
            .map(|s| s.iter().filter_map(|p| p.as_str()).collect())
            .unwrap_or_default();
        status["isolated"] == true && killed_ref.iter().all(|k| suspected.contains(&k.as_str()))
    })
    .await;
    let status = survivor.status().await;
    assert!(
        told,
        "isolated, with both killed members suspected: {status}"
    );
    let members: Vec<&str> = status["view"]["members"]
        .as_array()
        .expect("the view's members")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(members.len(), 3, "still counted: {status}");
    assert!(status["view"]["epoch"].as_u64().is_some(), "{status}");
    let log = survivor.log();
    for killed in &killed {
        assert!(
            log.lines()
                .any(|l| l.contains("member joined") && l.contains(killed)),
            "{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("member suspected") && l.contains(killed)),
            "{log}"
        );
    }
    assert!(log.contains("minority"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leaving_and_evicted_are_logged_at_info_level() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), &[]);
    let b = start(&dir.path().join("b"), &["--bootstrap", &a.listen]);
    let c = start(&dir.path().join("c"), &["--bootstrap", &a.listen]);
    let mut d = start(&dir.path().join("d"), &["--bootstrap", &a.listen]);
    let apis = [a.api, b.api, c.api, d.api];
    let joined = support::all_members(&apis, 4, Duration::from_secs(120)).await;
    assert!(joined, "four members");
    // d leaves gracefully
    let pid = d.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let left = eventually(Duration::from_secs(30), || {
        let done = matches!(d.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(left, "d leaves and exits");
    let d_id = d.peer_id.clone();
    let logged = eventually(Duration::from_secs(30), || async {
        a.log()
            .lines()
            .any(|l| l.contains("member left") && l.contains(&d_id))
    })
    .await;
    assert!(logged, "{}", a.log());
    // the view drops d before c goes (d may have left while the view admitting it was
    // being decided, which then held d's seat until the next view): with d's seat still in
    // the view, a and b would be two of four, not a majority
    let settled = eventually(Duration::from_secs(60), || async {
        let view = &a.status().await["view"]["members"];
        view.as_array().is_some_and(|m| m.len() == 3) && !view.to_string().contains(&d_id)
    })
    .await;
    assert!(settled, "a view of a, b and c: {}", a.status().await);
    // c is killed: a and b are a majority of the three and evict it
    let c_id = c.peer_id.clone();
    drop(c);
    let logged = eventually(Duration::from_secs(60), || async {
        let log = a.log();
        log.lines()
            .any(|l| l.contains("member suspected") && l.contains(&c_id))
            && log
                .lines()
                .any(|l| l.contains("member evicted") && l.contains(&c_id))
    })
    .await;
    assert!(logged, "{}", a.log());
    let status = a.status().await;
    assert_eq!(status["isolated"], false, "a majority: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_times_out_and_a_wrong_peer_id_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // a socket that accepts connections (the kernel does) and never says a word
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("/ip4/127.0.0.1/tcp/{}", silent.local_addr().unwrap().port());
    let a = start(&dir.path().join("a"), &["--bootstrap", &silent_addr]);
    let (api, silent_ref) = (a.api, &silent_addr);
    let said = eventually(Duration::from_secs(60), || async move {
        let status = http(api, "GET", "/v1/status", None).await.json();
        dial_failure(&status, silent_ref).is_some_and(|r| r.starts_with("timeout"))
    })
    .await;
    assert!(said, "{}", a.status().await);
    assert!(
        a.log().lines().any(|l| l.contains("dial failed")
            && l.contains(&silent_addr)
            && l.contains("timeout")),
        "{}",
        a.log()
    );

    // a live node's address with another node's peer id
    let founder = start(&dir.path().join("founder"), &[]);
    let other = start(&dir.path().join("other"), &[]);
    let wrong = format!("{}/p2p/{}", without_p2p(&founder.listen), other.peer_id);
    drop(other);
    let b = start(&dir.path().join("b"), &["--bootstrap", &wrong]);
    let founder_id = founder.peer_id.clone();
    let named = eventually(Duration::from_secs(60), || async {
        b.log().lines().any(|l| {
            l.contains("dial failed") && l.contains("wrong peer id") && l.contains(&founder_id)
        })
    })
    .await;
    assert!(named, "{}", b.log());
}
