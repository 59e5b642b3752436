//! The client commands of the built binary against running nodes (child processes):
//! `tidemark put | get | del | status | members | watch | snapshot create|list|download |
//! force-new-view`, in text and with `--json`, with an API token, and with a wrong `--api`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{http, spawn_with, NodeProcess};

/// `tidemark ARGS...` with `--api` pointing at `node`.
fn cli(node: &NodeProcess, args: &[&str]) -> Output {
    cli_env(node, args, &[])
}

fn cli_env(node: &NodeProcess, args: &[&str], env: &[(&str, &str)]) -> Output {
    let url = format!("http://{}", node.api);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command.args(args).args(["--api", &url]);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Calls `check` every 100 ms until it is true or `within` passed; whether it became true.
fn poll(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn put_get_del_status_and_members_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_with(&dir.path().join("a"), &[], Stdio::null());
    let b = spawn_with(
        &dir.path().join("b"),
        &["--bootstrap", &a.listen],
        Stdio::null(),
    );
    let joined = poll(Duration::from_secs(60), || {
        let out = cli(&b, &["status", "--json"]);
        out.status.success() && {
            let status = json(&out);
            status["phase"] == "member" && status["members"] == 2
        }
    });
    assert!(joined, "b joins a");

    // put, in text and in JSON
    let text = stdout(&cli(&b, &["put", "colour", "blue"]));
    assert!(
        text.starts_with("wrote \"colour\": op 1 of ") && text.contains(&b.peer_id),
        "{text}"
    );
    let id = json(&cli(&b, &["put", "shape", "round", "--json"]));
    assert_eq!(id["origin"], b.peer_id.as_str());
    assert_eq!(id["seq"], 2);

    // get: the applied state at once, the stable state on the other node once stable
    assert_eq!(
        stdout(&cli(&b, &["get", "colour", "--at", "applied"])),
        "blue\n"
    );
    let stable = poll(Duration::from_secs(30), || {
        let out = cli(&a, &["get", "shape"]);
        out.status.success() && stdout(&out) == "round\n"
    });
    assert!(stable, "a reads the value in its stable state");
    let got = json(&cli(&a, &["get", "colour", "--json"]));
    assert_eq!(
        got,
        serde_json::json!({"key": "colour", "value": "blue", "at": "snapshot"})
    );

    // del, and a missing key exits 1 saying so
    let text = stdout(&cli(&a, &["del", "colour"]));
    assert!(text.starts_with("deleted \"colour\": op 1 of "), "{text}");
    let out = cli(&a, &["get", "colour", "--at", "applied"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("no value for key \"colour\" in the applied state"),
        "{}",
        stderr(&out)
    );
    let out = cli(&a, &["get", "colour", "--at", "applied", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["value"], serde_json::Value::Null);

    // status
    let status = json(&cli(&a, &["status", "--json"]));
    assert_eq!(status["peer_id"], a.peer_id.as_str());
    assert_eq!(status["members"], 2);
    let text = stdout(&cli(&a, &["status"]));
    assert!(
        text.contains(&format!("peer id         {}", a.peer_id)),
        "{text}"
    );
    assert!(text.contains("phase           member"), "{text}");
    assert!(text.contains("members         2"), "{text}");
    assert!(text.contains("ORIGIN"), "{text}");

    // members: both nodes, alive
    let map = json(&cli(&a, &["members", "--json"]));
    let mut ids: Vec<&str> = map["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![a.peer_id.as_str(), b.peer_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let text = stdout(&cli(&a, &["members"]));
    assert!(text.starts_with("PEER ID"), "{text}");
    for id in &expected {
        let line = text.lines().find(|l| l.starts_with(id)).expect("a row");
        assert!(line.contains("alive"), "{line}");
    }
}

#[test]
fn snapshots_are_created_listed_and_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_with(&dir.path().join("a"), &[], Stdio::null());
    for i in 0..20 {
        stdout(&cli(&node, &["put", &format!("k{i}"), "v"]));
    }
    let stable = poll(Duration::from_secs(30), || {
        let status = json(&cli(&node, &["status", "--json"]));
        status["snapshot_point"] == status["applied"]
    });
    assert!(stable);

    let created = json(&cli(&node, &["snapshot", "create", "--json"]));
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["height"], 20);
    assert_eq!(created["entries"], 20);
    let text = stdout(&cli(&node, &["snapshot", "create"]));
    assert!(text.starts_with("created snapshot "), "{text}");
    assert!(text.contains("height 20, 20 entries"), "{text}");

    let list = json(&cli(&node, &["snapshot", "list", "--json"]));
    assert_eq!(list["snapshots"][0]["id"], id.as_str());
    let text = stdout(&cli(&node, &["snapshot", "list"]));
    assert!(text.starts_with("ID"), "{text}");
    let row = text.lines().find(|l| l.starts_with(&id)).expect("a row");
    assert!(row.contains("final"), "{row}");

    // to a file, checked by `snapshot verify`
    let file = dir.path().join("copy.tmsnap");
    let out = cli(
        &node,
        &["snapshot", "download", &id, "-o", file.to_str().unwrap()],
    );
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("wrote snapshot {id} to ")),
        "{text}"
    );
    let verified = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["snapshot", "verify", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(stdout(&verified).starts_with("ok: "));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() as u64, created["bytes"].as_u64().unwrap());

    // to stdout, and with --json the summary
    let out = cli(&node, &["snapshot", "download", &id, "-o", "-"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes);
    let other = dir.path().join("again.tmsnap");
    let summary = json(&cli(
        &node,
        &[
            "snapshot",
            "download",
            &id,
            "--output",
            other.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(summary["bytes"], bytes.len());
    assert_eq!(std::fs::read(&other).unwrap(), bytes);

    // an unknown id: exit 1, the node's reason, no file left
    let missing = dir.path().join("missing.tmsnap");
    let out = cli(
        &node,
        &[
            "snapshot",
            "download",
            "nope",
            "-o",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert!(!missing.exists());
    assert!(!dir.path().join("missing.tmsnap.partial").exists());
}

#[test]
fn watch_prints_the_snapshot_point_then_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_with(&dir.path().join("a"), &[], Stdio::null());
    let mut watch = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["watch", "--count", "2", "--json", "--api"])
        .arg(format!("http://{}", node.api))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let reader = BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let first = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the current snapshot point");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["ops"], 0);
    stdout(&cli(&node, &["put", "k", "v"]));
    let second = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the next snapshot point");
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(second["ops"], 1);
    assert_eq!(second["snapshot_point"][&node.peer_id], 1);
    let ended = poll(Duration::from_secs(30), || {
        matches!(watch.try_wait(), Ok(Some(_)))
    });
    assert!(ended, "watch --count 2 stops after two");
    assert!(watch.wait().unwrap().success());

    let text = stdout(&cli(&node, &["watch", "--count", "1"]));
    assert!(
        text.starts_with("snapshot point at 1 ops, digest "),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
}

#[test]
fn the_api_token_comes_from_a_file_and_urls_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let token = token.to_str().unwrap();
    let node = spawn_with(
        &dir.path().join("a"),
        &["--api-token-file", token],
        Stdio::null(),
    );
    let out = cli(&node, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("answered 401: this API needs an Authorization"),
        "{}",
        stderr(&out)
    );
    let status = json(&cli(
        &node,
        &["status", "--json", "--api-token-file", token],
    ));
    assert_eq!(status["peer_id"], node.peer_id.as_str());

    // TIDEMARK_API_URL and TIDEMARK_API_TOKEN_FILE instead of the flags
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["get", "nothing", "--json"])
        .env("TIDEMARK_API_URL", node.api.to_string())
        .env("TIDEMARK_API_TOKEN_FILE", token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["key"], "nothing");
}

#[test]
fn a_wrong_api_is_a_clear_error() {
    let run = |api: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["status", "--api", api, "--timeout", "5"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{api}");
        assert!(out.stdout.is_empty());
        stderr(&out)
    };
    // a port nobody listens on (bound, then closed)
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let err = run(&format!("http://127.0.0.1:{port}"));
    assert!(
        err.contains(&format!("cannot reach the node at http://127.0.0.1:{port}")),
        "{err}"
    );
    let err = run("https://127.0.0.1:1");
    assert!(err.contains("is not an API URL"), "{err}");
    assert!(err.contains("only http"), "{err}");
    let err = run("http://[nonsense");
    assert!(err.contains("is not an API URL"), "{err}");

    // no --api at all: a usage error naming it
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("members")
        .env_remove("TIDEMARK_API_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--api <URL>"), "{}", stderr(&out));
}

/// Two of three members die for good: the survivor cannot outvote them, so its snapshot
/// point waits for them. `tidemark force-new-view` (confirmed) makes it evict them, and its
/// write becomes stable; without the confirmation, the CLI and the API refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_forces_a_new_view_after_a_majority_loss() {
    let dir = tempfile::tempdir().unwrap();
    let survivor = spawn_with(&dir.path().join("a"), &[], Stdio::null());
    let b = spawn_with(
        &dir.path().join("b"),
        &["--bootstrap", &survivor.listen],
        Stdio::null(),
    );
    let c = spawn_with(
        &dir.path().join("c"),
        &["--bootstrap", &survivor.listen],
        Stdio::null(),
    );
    let apis = [survivor.api, b.api, c.api];
    let joined = support::all_members(&apis, 3, Duration::from_secs(90)).await;
    assert!(joined, "three members");
    drop(b);
    drop(c);
    let api = survivor.api;
    let isolated = support::eventually(Duration::from_secs(60), || async move {
        http(api, "GET", "/v1/status", None).await.json()["isolated"] == true
    })
    .await;
    assert!(isolated, "the survivor knows it hears from too few members");
    let written = http(
        api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "after", "value": "1"}"#),
    )
    .await;
    assert_eq!(written.status, 201, "{}", written.body);
    // the write is not stable: the lost members hold the snapshot point back
    let r = http(api, "GET", "/v1/state/after?at=snapshot", None).await;
    assert_eq!(r.status, 404, "{}", r.body);

    let refused = cli(&survivor, &["force-new-view"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--the-silent-members-are-gone"));
    let r = http(api, "POST", "/v1/admin/force-new-view", Some("{}")).await;
    assert_eq!(
        r.status, 400,
        "the API wants the confirmation too: {}",
        r.body
    );
    assert_eq!(
        http(api, "GET", "/v1/status", None).await.json()["members"],
        3,
        "nothing was evicted without it"
    );

    let forced: serde_json::Value = serde_json::from_str(&stdout(&cli(
        &survivor,
        &["force-new-view", "--the-silent-members-are-gone", "--json"],
    )))
    .unwrap();
    assert_eq!(
        forced["evicted"].as_array().map(Vec::len),
        Some(2),
        "{forced}"
    );
    assert_eq!(forced["members"], 1, "{forced}");
    let stable = support::eventually(Duration::from_secs(20), || async move {
        http(api, "GET", "/v1/state/after?at=snapshot", None)
            .await
            .status
            == 200
    })
    .await;
    assert!(stable, "the survivor's write is stable in the new view");
    let status = http(api, "GET", "/v1/status", None).await.json();
    assert_eq!(status["isolated"], false, "{status}");
}
