//! The client commands of the `tidemark` binary (`status`, `members`, `get`, `put`, `del`,
//! `watch`, `snapshot create|list|download`): their arguments, and their output, text for
//! people or JSON for scripts. The HTTP calls are [`tidemark::node::client`]'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tidemark::node::client::{Client, ClientError, SnapshotView};
use tidemark::node::views::{At, MemberView, OpIdView, SnapshotPointView, StatusView};

/// How to reach a node's HTTP API, and how to print its answers.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The node's HTTP API: the `api` URL it prints on start (http://HOST:PORT, or
    /// HOST:PORT).
    #[arg(long, value_name = "URL", env = "TIDEMARK_API_URL")]
    api: String,
    /// A file whose first line is the API's bearer token (the node's --api-token-file).
    #[arg(long, value_name = "FILE", env = "TIDEMARK_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Print the answer as JSON (one object per line for `watch`) instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the node's answer (for a download or a watch: for it to start).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

/// Which state `get` reads.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AtArg {
    /// The stable state, at the snapshot point: the same on every member.
    Snapshot,
    /// Everything the node has applied, stable or not.
    Applied,
}

impl AtArg {
    fn at(self) -> At {
        match self {
            AtArg::Snapshot => At::Snapshot,
            AtArg::Applied => At::Applied,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AtArg::Snapshot => "snapshot",
            AtArg::Applied => "applied",
        }
    }
}

/// One call of a client command.
pub enum Call {
    Status,
    Members,
    Get { key: String, at: AtArg },
    Put { key: String, value: Option<String> },
    Watch { count: Option<u64> },
    SnapshotCreate,
    SnapshotList,
    SnapshotDownload { id: String, output: Option<PathBuf> },
    ForceNewView,
}

/// Runs `call` against the node `args` names; prints the answer on stdout, an error on
/// stderr with exit code 1.
pub fn run(args: &ClientArgs, call: Call) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidemark: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(call_node(args, call)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidemark: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call_node(args: &ClientArgs, call: Call) -> Result<ExitCode, String> {
    let token = args
        .api_token_file
        .as_deref()
        .map(crate::read_api_token)
        .transpose()?;
    let mut client = Client::new(&args.api, token).map_err(|e| e.to_string())?;
    client.timeout = Duration::from_secs(args.timeout);
    let json = args.json;
    let failed = |e: ClientError| e.to_string();
    match call {
        Call::Status => {
            let status = client.status().await.map_err(failed)?;
            print_out(json, &status, || status_text(&status));
        }
        Call::ForceNewView => {
            let forced = client.force_new_view().await.map_err(failed)?;
            print_out(json, &forced, || {
                let mut text = format!(
                    "forced a new view: {} evicted, {} members now\n",
                    forced.evicted.len(),
                    forced.members
                );
                for e in &forced.evicted {
                    text.push_str(&format!(
                        "evicted {} (incarnation {})\n",
                        e.peer_id, e.incarnation
                    ));
                }
                text
            });
        }
        Call::Members => {
            let map = client.network_map().await.map_err(failed)?;
            print_out(json, &map, || members_text(&map.members));
        }
        Call::Get { key, at } => {
            let value = client.get(&key, at.at()).await.map_err(failed)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "key": key, "value": value, "at": at.name() })
                );
            }
            let Some(value) = value else {
                let state = match at {
                    AtArg::Snapshot => "stable state (at the snapshot point)",
                    AtArg::Applied => "applied state",
                };
                return Err(format!("no value for key {key:?} in the {state}"));
            };
            if !json {
                println!("{value}");
            }
        }
        Call::Put { key, value } => {
            let id = client.put(&key, value.as_deref()).await.map_err(failed)?;
            print_out(json, &id, || written_text(&key, value.is_some(), &id));
        }
        Call::Watch { count } => {
            let mut watch = client.watch().await.map_err(failed)?;
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                let point = watch
                    .next()
                    .await
                    .ok_or("the node closed the watch")?
                    .map_err(failed)?;
                print_out(json, &point, || point_text(&point));
                seen += 1;
            }
        }
        Call::SnapshotCreate => {
            let snapshot = client.create_snapshot().await.map_err(failed)?;
            print_out(json, &snapshot, || {
                format!(
                    "created snapshot {}: height {}, {} entries, {} chunks, {} bytes, digest {}\n",
                    snapshot.id,
                    snapshot.height,
                    snapshot.entries,
                    snapshot.chunks,
                    snapshot.bytes,
                    snapshot.digest
                )
            });
        }
        Call::SnapshotList => {
            let snapshots = client.snapshots().await.map_err(failed)?;
            if json {
                println!("{}", serde_json::json!({ "snapshots": snapshots }));
            } else {
                print!("{}", snapshots_text(&snapshots));
            }
        }
        Call::SnapshotDownload { id, output } => {
            return download(&client, json, &id, output).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the snapshot `id` to `output` (default `<id>.tmsnap`; `-` is stdout). A failed
/// download leaves no file behind.
async fn download(
    client: &Client,
    json: bool,
    id: &str,
    output: Option<PathBuf>,
) -> Result<ExitCode, String> {
    if output.as_deref() == Some(std::path::Path::new("-")) {
        let mut out = tokio::io::stdout();
        client
            .download_snapshot(id, &mut out)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = output.unwrap_or_else(|| PathBuf::from(format!("{id}.tmsnap")));
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let result = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let bytes = client
            .download_snapshot(id, &mut file)
            .await
            .map_err(|e| e.to_string())?;
        file.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
        Ok::<u64, String>(bytes)
    }
    .await;
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    let shown = serde_json::json!({ "id": id, "path": path, "bytes": bytes });
    print_out(json, &shown, || {
        format!(
            "wrote snapshot {id} to {} ({bytes} bytes)\n",
            path.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as one line of JSON, or `text()` for people.
fn print_out<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("tidemark: cannot print JSON: {e}"),
        }
    } else {
        print!("{}", text());
    }
}

fn total(vector: &std::collections::BTreeMap<String, u64>) -> u64 {
    vector.values().sum()
}

fn status_text(s: &StatusView) -> String {
    let applied = total(&s.applied);
    let stable = total(&s.snapshot_point);
    let mut out = format!(
        "peer id         {}\nnetwork         {}\nphase           {}\nincarnation     {}\n\
         members         {}\napplied         {applied} ops\n\
         snapshot point  {stable} ops ({} behind)\ndigest          {}\n",
        s.peer_id,
        s.network,
        s.phase,
        s.incarnation,
        s.members,
        applied.saturating_sub(stable),
        s.digest
    );
    for addr in &s.listen_addrs {
        out.push_str(&format!("listening on    {addr}\n"));
    }
    if let Some(join) = &s.join {
        out.push_str(&format!(
            "join            {} requests, {} unanswered, {} refusals, {} rounds, {} sponsors\n",
            join.requests, join.unanswered, join.refusals, join.rounds, join.sponsors
        ));
        if let Some(reason) = &join.last_refusal {
            out.push_str(&format!("last refusal    {reason}\n"));
        }
    }
    if !s.applied.is_empty() {
        let rows: Vec<Vec<String>> = s
            .applied
            .iter()
            .map(|(origin, seq)| {
                let stable = s.snapshot_point.get(origin).copied().unwrap_or(0);
                vec![origin.clone(), seq.to_string(), stable.to_string()]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["ORIGIN", "APPLIED", "SNAPSHOT POINT"], &rows));
    }
    out
}

fn members_text(members: &[MemberView]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.peer_id.clone(),
                m.state.clone(),
                m.incarnation.to_string(),
                total(&m.applied).to_string(),
                format!("{:.1} s ago", m.last_heard_ms_ago as f64 / 1000.0),
                m.addrs.join(" "),
            ]
        })
        .collect();
    table(
        &[
            "PEER ID",
            "STATE",
            "INCARNATION",
            "APPLIED",
            "LAST HEARD",
            "ADDRESSES",
        ],
        &rows,
    )
}

fn written_text(key: &str, put: bool, id: &OpIdView) -> String {
    let what = if put { "wrote" } else { "deleted" };
    format!("{what} {key:?}: op {} of {}\n", id.seq, id.origin)
}

fn point_text(p: &SnapshotPointView) -> String {
    format!(
        "snapshot point at {} ops, digest {}, incarnation {}\n",
        p.ops, p.digest, p.incarnation
    )
}

fn snapshots_text(snapshots: &[SnapshotView]) -> String {
    if snapshots.is_empty() {
        return "no snapshots\n".into();
    }
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.height.to_string(),
                s.entries.to_string(),
                s.bytes.to_string(),
                utc(s.created_unix_ms),
                s.status.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "HEIGHT",
            "ENTRIES",
            "BYTES",
            "CREATED (UTC)",
            "STATUS",
        ],
        &rows,
    )
}

/// Left-aligned columns, two spaces apart, the last one unpadded.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(head.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for milliseconds since the Unix epoch.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_763_800_000_000), "2025-11-22 08:26:40");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn tables_line_up() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A     BB\nlong  x\ns     y\n");
    }
}
