//! `tidemark node` configured through the environment and the `--config` file as well as
//! flags: every flag has a `TIDEMARK_*` variable and a key in the file, a flag wins over the
//! environment and the environment over the file, and unknown keys are refused by name.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{http, http_with, spawn_command, NodeProcess};

/// `tidemark node` with no arguments but `args`, and the environment `env`.
fn node_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command.arg("node").args(args).stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn network_of(node: &NodeProcess) -> String {
    let status = http(node.api, "GET", "/v1/status", None).await.json();
    status["network"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_from_environment_variables_alone() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "s3cret\n");
    let a_dir = dir.path().join("a");
    let founder = spawn_command(node_command(
        &[],
        &[
            ("TIDEMARK_DATA_DIR", a_dir.to_str().unwrap()),
            ("TIDEMARK_LISTEN", "/ip4/127.0.0.1/tcp/0"),
            ("TIDEMARK_API", "127.0.0.1:0"),
            ("TIDEMARK_NETWORK", "from-env"),
            ("TIDEMARK_API_TOKEN_FILE", &token),
        ],
    ));
    let bearer = "Authorization: Bearer s3cret";
    let status = http_with(founder.api, "GET", "/v1/status", None, &[bearer]).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["network"], "from-env");
    assert_eq!(
        http(founder.api, "GET", "/v1/status", None).await.status,
        401,
        "TIDEMARK_API_TOKEN_FILE is in force"
    );

    // a list in TIDEMARK_BOOTSTRAP, comma-separated: a dead address, then the founder;
    // TIDEMARK_ARCHIVER is a switch given as a word
    let b_dir = dir.path().join("b");
    let bootstrap = format!("/ip4/127.0.0.1/tcp/1,{}", founder.listen);
    let archiver = spawn_command(node_command(
        &[],
        &[
            ("TIDEMARK_DATA_DIR", b_dir.to_str().unwrap()),
            ("TIDEMARK_LISTEN", "/ip4/127.0.0.1/tcp/0"),
            ("TIDEMARK_API", "127.0.0.1:0"),
            ("TIDEMARK_NETWORK", "from-env"),
            ("TIDEMARK_BOOTSTRAP", &bootstrap),
            ("TIDEMARK_ARCHIVER", "yes"),
        ],
    ));
    let joined = support::eventually(Duration::from_secs(60), || async {
        let status = http(archiver.api, "GET", "/v1/status", None).await.json();
        status["phase"] == "member" && status["members"] == 2
    })
    .await;
    assert!(joined, "the node joins through TIDEMARK_BOOTSTRAP");
    let write = http(
        archiver.api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "k", "value": "v"}"#),
    )
    .await;
    assert_eq!(write.status, 403, "TIDEMARK_ARCHIVER=yes made an archiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_the_environment_and_the_environment_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // the file names every kind of value: paths, addresses, a list, a number, switches
    let config = write(
        dir.path(),
        "node.toml",
        &format!(
            "data_dir = {:?}\nlisten = \"/ip4/127.0.0.1/tcp/0\"\napi = \"127.0.0.1:0\"\n\
             bootstrap = []\nnetwork = \"from-file\"\narchiver = true\nkeep_snapshots = 3\n\
             restored_backup = false\n",
            data.to_str().unwrap()
        ),
    );
    let no_env: &[(&str, &str)] = &[];
    let env: &[(&str, &str)] = &[("TIDEMARK_NETWORK", "from-env")];

    let node = spawn_command(node_command(&["--config", &config], no_env));
    assert_eq!(network_of(&node).await, "from-file");
    let write = http(
        node.api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "k", "value": "v"}"#),
    )
    .await;
    assert_eq!(write.status, 403, "archiver = true in the file");
    drop(node);

    let node = spawn_command(node_command(&["--config", &config], env));
    assert_eq!(network_of(&node).await, "from-env");
    drop(node);

    let node = spawn_command(node_command(
        &["--config", &config, "--network", "from-flag"],
        env,
    ));
    assert_eq!(network_of(&node).await, "from-flag");
    drop(node);

    // TIDEMARK_CONFIG names the file too
    let node = spawn_command(node_command(&[], &[("TIDEMARK_CONFIG", &config)]));
    assert_eq!(network_of(&node).await, "from-file");
}

#[test]
fn bad_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let config = write(dir.path(), "bad.toml", text);
        let out = node_command(&["--config", &config], &[])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text:?} is refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("data_dir = \"d\"\nkeep_snapshot = 3\n");
    assert!(err.contains("unknown key `keep_snapshot`"), "{err}");
    assert!(err.contains("keep_snapshots"), "lists the keys: {err}");
    let err = run("data_dir = \"d\"\napi = \"nowhere\"\n");
    assert!(err.contains("--api") && err.contains("nowhere"), "{err}");
    assert!(err.contains("bad.toml set") && err.contains("api"), "{err}");
    let err = run("archiver = \"sometimes\"\n");
    assert!(err.contains("archiver"), "{err}");
    let err = run("archiver = 1\n");
    assert!(err.contains("archiver: expected true or false"), "{err}");
    let err = run("network = [\"a\", \"b\"]\n");
    assert!(err.contains("network: takes one value"), "{err}");
    let err = run("config = \"other.toml\"\n");
    assert!(err.contains("unknown key `config`"), "{err}");
}

#[test]
fn help_describes_every_argument_and_the_order_of_precedence() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    for sub in ["inspect", "verify"] {
        let text = help(&["snapshot", sub]);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("<FILE>"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.trim_start().len() > "<FILE>".len() + 10,
            "<FILE> is described: {text}"
        );
    }
    let text = help(&["node"]);
    assert!(text.contains("[env: TIDEMARK_DATA_DIR=]"), "{text}");
    assert!(
        text.contains("A flag wins over the environment, and the environment over the file"),
        "{text}"
    );
}
