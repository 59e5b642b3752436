//! The `tidemark` binary: `tidemark node` runs one node, `tidemark demo` a local network,
//! `tidemark status`, `get`, `put` and the other client commands talk to a running node
//! over its HTTP API ([`client_commands`]).

mod client_commands;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use client_commands::{AtArg, Call, ClientArgs};
use libp2p::pnet::PreSharedKey;
use libp2p::Multiaddr;
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
    /// Inspect or verify a snapshot file; create, list or download a running node's
    /// snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show a running node's status: phase, members, applied ops, snapshot point, digest.
    Status(ClientArgs),
    /// List the members in a running node's network map, with their state and applied ops.
    Members(ClientArgs),
    /// Print the value of KEY in a running node's stable state (or its applied state, with
    /// --at applied); exits 1 if the key has no value there.
    Get {
        /// The key to read.
        key: String,
        /// Which state to read.
        #[arg(long, value_enum, default_value_t = AtArg::Snapshot)]
        at: AtArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write VALUE under KEY through a running node; returns once the node stored the op.
    Put {
        /// The key to write.
        key: String,
        /// The value to write.
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete KEY through a running node; returns once the node stored the op.
    Del {
        /// The key to delete.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a running node's snapshot point: one line now, then one per change, until
    /// the node stops (exit 1) or --count lines were printed.
    Watch {
        /// Stop after this many snapshot points.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The way out of a majority loss: make a running node evict every member it has not
    /// heard from lately, without a majority, so that the survivors form the next view and
    /// their snapshot point moves again. Only when the silent members are gone for good: if
    /// they are alive behind a partition, both sides then decide on their own, and one
    /// side's stable writes are lost when they meet.
    ForceNewView {
        /// Say that the silent members are gone for good (required).
        #[arg(long)]
        the_silent_members_are_gone: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a new random key for a private network (libp2p's swarm.key format) on stdout;
    /// give the file to every node with --network-key.
    NetworkKey,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Print a snapshot file's header as JSON: format version, snapshot point, height,
    /// digest, creation time, entries and chunks.
    Inspect {
        /// The snapshot file (from `GET /v1/snapshots/{id}` or a node's snapshot directory).
        file: PathBuf,
    },
    /// Check the header's hash, every chunk's hash and the state's digest; exits 1 with the
    /// reason on the first mismatch.
    Verify {
        /// The snapshot file to check.
        file: PathBuf,
    },
    /// Ask a running node for a new snapshot of its stable state.
    Create(ClientArgs),
    /// List a running node's snapshots by height.
    List(ClientArgs),
    /// Download one of a running node's snapshot files.
    Download {
        /// The snapshot's id (from `tidemark snapshot list`).
        id: String,
        /// Where to write it [default: ID.tmsnap; - for stdout].
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `tidemark node --help` says after the flags.
const NODE_AFTER_HELP: &str = "\
Every flag can also be given as an environment variable, TIDEMARK_ and the flag's name in \
capitals with underscores (--data-dir is TIDEMARK_DATA_DIR), and in the --config file under \
its name with underscores (data_dir = \"/var/lib/tidemark\"). A flag wins over the \
environment, and the environment over the file. --bootstrap takes a comma-separated list in \
the environment and a TOML array in the file; the switches (--archiver, --restored-backup) \
take true or false in both.";

#[derive(clap::Args)]
#[command(after_help = NODE_AFTER_HELP)]
struct NodeArgs {
    /// TOML file setting any of these flags by name with underscores (data_dir = "DIR",
    /// bootstrap = ["ADDR", ..], archiver = true); unknown keys are refused. Flags and
    /// TIDEMARK_* environment variables win over it.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Where the node keeps its key, checkpoint and ops (required here, in the environment
    /// or in the file).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Multiaddr to listen on [default: /ip4/127.0.0.1/tcp/0].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Option<Multiaddr>,
    /// Address of the HTTP API [default: 127.0.0.1:0].
    #[arg(long, value_name = "HOST:PORT")]
    api: Option<SocketAddr>,
    /// A peer to join through (repeatable, or comma-separated); with a /p2p/<peer id>
    /// suffix, or without; /dns4/<host>/tcp/<port> (and /dns6, /dns) names are resolved
    /// when dialled.
    #[arg(long, value_name = "MULTIADDR", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Network name (the gossip topic is tidemark/<network>/ops) [default: tidemark].
    #[arg(long, value_name = "NAME")]
    network: Option<String>,
    /// Run as an archiver: join, never write ops, keep every snapshot taken (on request or
    /// on its schedule) and serve them to joiners.
    #[arg(long)]
    archiver: bool,
    /// Found a new network from this snapshot file, after every node of the old one was
    /// lost (needs an empty --data-dir and no --bootstrap).
    #[arg(long, value_name = "FILE", conflicts_with = "bootstrap")]
    restore_from: Option<PathBuf>,
    /// Final snapshots to keep, the most recent ones [default: 2; an archiver keeps all].
    /// Snapshots a schedule request took are kept, and not counted, until it is deleted.
    #[arg(long, value_name = "K")]
    keep_snapshots: Option<usize>,
    /// Bytes per second this node may spend writing snapshot files and serving their
    /// chunks to joiners, so a large export or transfer leaves disk and network to the
    /// ops [default: no limit].
    #[arg(long, value_name = "BYTES_PER_S")]
    snapshot_io_limit: Option<u64>,
    /// A private network's key file (from `tidemark network-key`): only nodes holding the
    /// same key can connect to this one, join it or be joined by it.
    #[arg(long, value_name = "FILE")]
    network_key: Option<PathBuf>,
    /// A file holding a bearer token: every HTTP API call must then carry
    /// `Authorization: Bearer <token>` (the file's first line), except the probes /healthz
    /// and /readyz.
    #[arg(long, value_name = "FILE")]
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

/// The environment variable an argument of `node` (or a global one) is read from.
fn env_name(id: &str) -> String {
    format!("TIDEMARK_{}", id.to_ascii_uppercase())
}

/// Whether an argument is one of the ids clap adds by itself.
fn is_builtin(id: &str) -> bool {
    matches!(id, "help" | "version")
}

/// The command line, with every global argument and every argument of `node` also read from
/// its `TIDEMARK_*` environment variable (a switch takes true/false, yes/no, on/off or 1/0).
fn command() -> clap::Command {
    fn with_env(cmd: clap::Command, only_global: bool) -> clap::Command {
        let ids: Vec<String> = cmd
            .get_arguments()
            .filter(|a| !is_builtin(a.get_id().as_str()) && (!only_global || a.is_global_set()))
            .map(|a| a.get_id().to_string())
            .collect();
        ids.iter().fold(cmd, |cmd, id| {
            cmd.mut_arg(id, |arg| {
                let arg = arg.env(env_name(id));
                if matches!(arg.get_action(), ArgAction::SetTrue) {
                    arg.value_parser(BoolishValueParser::new())
                } else {
                    arg
                }
            })
        })
    }
    let cli = with_env(Cli::command(), true);
    cli.mut_subcommand("node", |node| with_env(node, false))
}

/// Reads a `node --config` file and puts each of its values into the argument's
/// environment variable unless that is set already, so that the parse which follows takes
/// a flag first, then the environment, then the file. Unknown keys and values the argument
/// does not accept are refused, naming the key.
fn load_config_file(path: &Path, cli: &clap::Command) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let node = cli
        .find_subcommand("node")
        .expect("the node subcommand exists");
    let settable = || {
        cli.get_arguments()
            .filter(|a| a.is_global_set())
            .chain(node.get_arguments())
            .filter(|a| !is_builtin(a.get_id().as_str()) && a.get_id() != "config")
    };
    let mut values = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settable().find(|a| a.get_id() == key.as_str()) else {
            let known: Vec<String> = settable().map(|a| a.get_id().to_string()).collect();
            return Err(format!(
                "{}: unknown key `{key}`; the keys are: {}",
                path.display(),
                known.join(", ")
            ));
        };
        let bad = |why: &str| format!("{}: {key}: {why}", path.display());
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) if !switch => Ok(i.to_string()),
            toml::Value::Float(f) if !switch => Ok(f.to_string()),
            toml::Value::Boolean(b) if switch => Ok(b.to_string()),
            _ if switch => Err(bad("expected true or false")),
            _ => Err(bad("expected a string or a number")),
        };
        let items = match value {
            toml::Value::Array(items) if repeatable => {
                items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
            }
            toml::Value::Array(_) => return Err(bad("takes one value, not a list")),
            value => vec![scalar(value)?],
        };
        if repeatable && items.iter().any(|i| i.contains(',')) {
            return Err(bad("an item holds a comma"));
        }
        // `false` for a switch, or an empty list, is the same as leaving the key out
        if (switch && items == ["false"]) || items.is_empty() {
            continue;
        }
        values.push((key, items.join(",")));
    }
    let mut taken = Vec::new();
    for (key, value) in values {
        let name = env_name(key);
        if std::env::var_os(&name).is_none() {
            // the process is single-threaded still: no runtime has started
            std::env::set_var(name, value);
            taken.push(key.clone());
        }
    }
    Ok(taken)
}

/// Parses the command line; for `node --config FILE`, parses it again with the file's
/// values under the flags and the environment. Exits with clap's usage error, or 2 with the
/// file's error.
fn parse_cli() -> Cli {
    let matches = command().get_matches();
    let config = match matches.subcommand() {
        Some(("node", node)) => node.get_one::<PathBuf>("config").cloned(),
        _ => None,
    };
    let matches = match config {
        None => matches,
        Some(path) => {
            let taken = load_config_file(&path, &command()).unwrap_or_else(|e| {
                eprintln!("tidemark: {e}");
                std::process::exit(2);
            });
            command().try_get_matches().unwrap_or_else(|e| {
                let _ = e.print();
                if !taken.is_empty() {
                    eprintln!(
                        "note: {} set {}, through their TIDEMARK_* environment variables",
                        path.display(),
                        taken.join(", ")
                    );
                }
                std::process::exit(e.exit_code());
            })
        }
    };
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    let (client, call) = match cli.command {
        Command::Snapshot(SnapshotCommand::Inspect { file }) => return run_snapshot(&file, false),
        Command::Snapshot(SnapshotCommand::Verify { file }) => return run_snapshot(&file, true),
        Command::NetworkKey => return new_network_key(),
        Command::Status(client) => (client, Call::Status),
        Command::Members(client) => (client, Call::Members),
        Command::Get { key, at, client } => (client, Call::Get { key, at }),
        Command::Put { key, value, client } => (
            client,
            Call::Put {
                key,
                value: Some(value),
            },
        ),
        Command::Del { key, client } => (client, Call::Put { key, value: None }),
        Command::Watch { count, client } => (client, Call::Watch { count }),
        Command::ForceNewView {
            the_silent_members_are_gone,
            client,
        } => {
            if !the_silent_members_are_gone {
                eprintln!("tidemark: force-new-view evicts every member the node does not hear from, without a majority; if they are alive behind a partition, both sides decide on their own and one side's stable writes are lost when they meet. Give --the-silent-members-are-gone only if they are gone for good.");
                return ExitCode::from(2);
            }
            (client, Call::ForceNewView)
        }
        Command::Snapshot(SnapshotCommand::Create(client)) => (client, Call::SnapshotCreate),
        Command::Snapshot(SnapshotCommand::List(client)) => (client, Call::SnapshotList),
        Command::Snapshot(SnapshotCommand::Download { id, output, client }) => {
            (client, Call::SnapshotDownload { id, output })
        }
        command @ (Command::Node(_) | Command::Demo(_)) => {
            return run_server(command, cli.log_format)
        }
    };
    client_commands::run(&client, call)
}

/// Runs `node` or `demo` on a multi-threaded runtime, with logs on stderr.
fn run_server(command: Command, log_format: LogFormat) -> ExitCode {
    init_logging(log_format, matches!(command, Command::Demo(_)));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidemark: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Node(args) => run_node(*args).await,
            Command::Demo(args) => run_demo(args).await,
            _ => Err("not a command that runs a node".into()),
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

/// `tidemark snapshot inspect FILE`, or `verify FILE`.
fn run_snapshot(file: &Path, verify: bool) -> ExitCode {
    use tidemark::ops_log::LwwMap;
    use tidemark::snapshot::{read_header, read_snapshot};
    let result = std::fs::File::open(file)
        .map(std::io::BufReader::new)
        .map_err(tidemark::snapshot::SnapshotError::from)
        .and_then(|mut input| {
            if verify {
                read_snapshot::<LwwMap>(&mut input).map(|(header, _)| header)
            } else {
                read_header(&mut input)
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
    if verify {
        println!(
            "ok: {} chunks and the state's digest {} verified (height {}, {} entries)",
            header.chunks.len(),
            header.digest.to_hex(),
            header.height,
            header.entries
        );
    } else {
        println!("{view}");
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
    let data_dir = args.data_dir.ok_or(
        "--data-dir is required (or TIDEMARK_DATA_DIR in the environment, or data_dir in --config)",
    )?;
    let mut config = NodeConfig::local(data_dir);
    if let Some(listen) = args.listen {
        config.listen = vec![listen];
    }
    config.api = Some(args.api.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))));
    config.bootstrap = args.bootstrap;
    if let Some(network) = args.network {
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
    config.snapshots.io_bytes_per_s = match args.snapshot_io_limit {
        Some(0) => return Err("--snapshot-io-limit must be at least 1 byte per second".into()),
        limit => limit,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every subcommand, as `(subcommand path, argument id)`, without a
    /// description.
    fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none() && !is_builtin(arg.get_id().as_str()) {
                out.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            undescribed(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_of_every_subcommand_has_a_description() {
        let mut missing = Vec::new();
        undescribed(&command(), "tidemark", &mut missing);
        assert!(missing.is_empty(), "no --help text for {missing:?}");
    }

    #[test]
    fn every_node_argument_has_its_environment_variable() {
        let cli = command();
        let node = cli.find_subcommand("node").unwrap();
        for arg in node.get_arguments() {
            let id = arg.get_id().as_str();
            if !is_builtin(id) {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert_eq!(env, Some(env_name(id)), "{id}");
            }
        }
        assert_eq!(env_name("data_dir"), "TIDEMARK_DATA_DIR");
    }
}
