//! The `tidemark` binary: `tidemark node` runs one node, `tidemark demo` a local network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use libp2p::pnet::PreSharedKey;
use libp2p::Multiaddr;
use serde::Deserialize;
use tidemark::node::demo::{self, DemoConfig};
use tidemark::node::{Node, NodeConfig, NodeError};

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "A peer-to-peer replica with a decentralized snapshot point"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format (logs go to stderr; RUST_LOG sets the level, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: found a network, join one through --bootstrap, or resume from --data-dir.
    /// SIGINT or SIGTERM leaves the network gracefully; if the leave fails (this node's
    /// ops are not known to be on every member in time), the node stops as a member,
    /// says why on stderr and exits 1.
    Node(Box<NodeArgs>),
    /// Start a local network of real nodes on 127.0.0.1 and show the snapshot point move.
    Demo(DemoArgs),
    /// Inspect or verify a snapshot file.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print a new random key for a private network (libp2p's swarm.key format) on stdout;
    /// give the file to every node with --network-key.
    NetworkKey,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Print a snapshot file's header as JSON: format version, snapshot point, height,
    /// digest, creation time, entries and chunks.
    Inspect { file: PathBuf },
    /// Check the header's hash, every chunk's hash and the state's digest; exits 1 with the
    /// reason on the first mismatch.
    Verify { file: PathBuf },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML file with any of: data_dir, listen, api, bootstrap (list), network. Flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the node keeps its key, checkpoint and ops.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Multiaddr to listen on [default: /ip4/127.0.0.1/tcp/0].
    #[arg(long)]
    listen: Option<Multiaddr>,
    /// Address of the HTTP API [default: 127.0.0.1:0].
    #[arg(long)]
    api: Option<SocketAddr>,
    /// A peer to join through (repeatable); with a /p2p/<peer id> suffix, or without.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Network name (the gossip topic is tidemark/<network>/ops) [default: tidemark].
    #[arg(long)]
    network: Option<String>,
    /// Run as an archiver: join, never write ops, keep every snapshot taken (on request or
    /// on its schedule) and serve them to joiners.
    #[arg(long)]
    archiver: bool,
    /// Found a new network from this snapshot file, after every node of the old one was
    /// lost (needs an empty --data-dir and no --bootstrap).
    #[arg(long, conflicts_with = "bootstrap")]
    restore_from: Option<PathBuf>,
    /// Final snapshots to keep, the most recent ones [default: 2; an archiver keeps all].
    #[arg(long)]
    keep_snapshots: Option<usize>,
    /// A private network's key file (from `tidemark network-key`): only nodes holding the
    /// same key can connect to this one, join it or be joined by it.
    #[arg(long)]
    network_key: Option<PathBuf>,
    /// A file holding a bearer token: every HTTP API call must then carry
    /// `Authorization: Bearer <token>` (the file's first line).
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// The --data-dir was restored from a backup, which may be older than the node's last
    /// state: take a new node key (a new peer id, replacing the stored one), join the
    /// network as a new member through the members the backup knows, and republish every
    /// op the backup holds that the network lacks; the old identity is evicted like a
    /// crashed member. Give it once, on the first start after the restore. Without it, a
    /// node started from an old copy refuses writes once it sees that the network has
    /// newer ops of it.
    #[arg(long, conflicts_with = "restore_from")]
    restored_backup: bool,
    /// A file listing the peer ids that may write, one per line (`#` starts a comment):
    /// ops of any other origin are refused and counted, and this node's own writes get 403
    /// if it is not listed. Give every member the same file. Without it every member may
    /// write; ops from nodes that are not and never were members are refused either way.
    #[arg(long)]
    writers: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    api: Option<SocketAddr>,
    #[serde(default)]
    bootstrap: Vec<String>,
    network: Option<String>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How long writes go on, in seconds, before the network settles and the demo ends.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Ops per second written by each node.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Do not kill a node halfway.
    #[arg(long)]
    no_crash: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Snapshot(command) = &cli.command {
        return run_snapshot(command);
    }
    if let Command::NetworkKey = &cli.command {
        return new_network_key();
    }
    init_logging(cli.log_format, matches!(cli.command, Command::Demo(_)));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidemark: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(*args).await,
            Command::Demo(args) => run_demo(args).await,
            Command::Snapshot(_) | Command::NetworkKey => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidemark: {e}");
            ExitCode::FAILURE
        }
    }
}

fn new_network_key() -> ExitCode {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        eprintln!("tidemark: no randomness for a key: {e}");
        return ExitCode::FAILURE;
    }
    print!("{}", PreSharedKey::new(bytes).to_key_file());
    ExitCode::SUCCESS
}

fn read_network_key(path: &std::path::Path) -> Result<PreSharedKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the network key {}: {e}", path.display()))?;
    text.parse()
        .map_err(|e| format!("{} is not a network key file: {e}", path.display()))
}

fn read_api_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the API token {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("{}: the API token is empty", path.display()));
    }
    Ok(token.to_string())
}

fn run_snapshot(command: &SnapshotCommand) -> ExitCode {
    use tidemark::ops_log::LwwMap;
    use tidemark::snapshot::{read_header, read_snapshot};
    let (SnapshotCommand::Inspect { file } | SnapshotCommand::Verify { file }) = command;
    let open = || -> std::io::Result<std::io::BufReader<std::fs::File>> {
        Ok(std::io::BufReader::new(std::fs::File::open(file)?))
    };
    let result = open()
        .map_err(tidemark::snapshot::SnapshotError::from)
        .and_then(|mut input| match command {
            SnapshotCommand::Inspect { .. } => read_header(&mut input),
            SnapshotCommand::Verify { .. } => {
                read_snapshot::<LwwMap>(&mut input).map(|(header, _)| header)
            }
        });
    let header = match result {
        Ok(header) => header,
        Err(e) => {
            eprintln!("tidemark: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let view = serde_json::json!({
        "version": header.version,
        "snapshot_point": tidemark::node::views::vector_json(&header.snapshot_point),
        "height": header.height,
        "digest": header.digest.to_hex(),
        "created_unix_ms": header.created_unix_ms,
        "entries": header.entries,
        "chunks": header.chunks.len(),
        "body_bytes": header.body_len(),
    });
    match command {
        SnapshotCommand::Inspect { .. } => println!("{view}"),
        SnapshotCommand::Verify { .. } => println!(
            "ok: {} chunks and the state's digest {} verified (height {}, {} entries)",
            header.chunks.len(),
            header.digest.to_hex(),
            header.height,
            header.entries
        ),
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn node_config(args: NodeArgs) -> Result<NodeConfig, String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .ok_or("--data-dir is required (or data_dir in --config)")?;
    let mut config = NodeConfig::local(data_dir);
    if let Some(listen) = args.listen.or(file
        .listen
        .map(|l| l.parse().map_err(|e| format!("listen {l}: {e}")))
        .transpose()?)
    {
        config.listen = vec![listen];
    }
    config.api = Some(
        args.api
            .or(file.api)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    config.bootstrap = if args.bootstrap.is_empty() {
        file.bootstrap
            .iter()
            .map(|b| b.parse().map_err(|e| format!("bootstrap {b}: {e}")))
            .collect::<Result<_, _>>()?
    } else {
        args.bootstrap
    };
    if let Some(network) = args.network.or(file.network) {
        config.network = network;
    }
    config.archiver = args.archiver;
    config.restore_from = args.restore_from;
    config.restored_backup = args.restored_backup;
    config.network_key = args
        .network_key
        .as_deref()
        .map(read_network_key)
        .transpose()?;
    config.api_token = args
        .api_token_file
        .as_deref()
        .map(read_api_token)
        .transpose()?;
    config.writers = args
        .writers
        .as_deref()
        .map(tidemark::node::read_writers_file)
        .transpose()
        .map_err(|e| e.to_string())?;
    config.snapshots.keep = match args.keep_snapshots {
        Some(0) => return Err("--keep-snapshots must be at least 1".into()),
        Some(k) => Some(k),
        None if args.archiver => None,
        None => Some(2),
    };
    Ok(config)
}

async fn run_node(args: NodeArgs) -> Result<ExitCode, String> {
    let config = node_config(args)?;
    let node = Node::start(config).await.map_err(|e| e.to_string())?;
    // one line on stdout for scripts: who this node is and where to reach it
    println!(
        "{}",
        serde_json::json!({
            "peer_id": node.handle().peer_id(),
            "listen_addrs": node.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "api": node.api_addr().map(|a| format!("http://{a}")),
        })
    );
    let handle = node.handle();
    tokio::select! {
        result = node.wait() => return result.map(|_| ExitCode::SUCCESS).map_err(|e| e.to_string()),
        _ = shutdown_signal() => {}
    }
    tracing::info!("signal received: leaving the network");
    match tokio::time::timeout(Duration::from_secs(15), handle.leave()).await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(NodeError::LeaveFailed(failure))) => {
            // stop all the same (an operator asked for it), but do not call it a leave
            eprintln!("tidemark: the node did not leave the network: {failure}");
            eprintln!(
                "tidemark: it stopped as a member: the others count it until they evict it, and it rejoins when started again with this data dir"
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => Err(format!("could not leave the network: {e}")),
        Err(_) => Err("did not finish leaving within 15 s".into()),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_demo(args: DemoArgs) -> Result<ExitCode, String> {
    let config = DemoConfig {
        nodes: args.nodes,
        duration: Duration::from_secs(args.duration),
        rate: args.rate,
        crash: !args.no_crash,
        ..DemoConfig::default()
    };
    let summary = demo::run(config).await.map_err(|e| e.to_string())?;
    Ok(if summary.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
