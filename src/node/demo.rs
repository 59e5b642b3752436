//! `tidemark demo`: a local network of real nodes on loopback, showing the snapshot point.
//!
//! It starts `nodes` nodes in this process (real libp2p over TCP on 127.0.0.1, each with its
//! own data dir in a temporary directory), all joining through the first one. Every node
//! writes ops at a steady rate. A table shows each node's applied ops, snapshot point and
//! lag. Partway through, one node is killed (a crash: nothing announced) and the table shows
//! the others' snapshot points stall until failure detection evicts it (a line says when),
//! then move on. At the end writes stop, the network settles, and a summary says whether
//! every node reached the same snapshot point with the same digest, and how many ops the
//! killed node acknowledged but never published (those no other node could apply).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use tokio::time::Instant;

use super::views::At;
use super::{Node, NodeConfig, NodeHandle};

/// Settings of the demo.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub nodes: usize,
    pub duration: Duration,
    /// Ops per second written by each node.
    pub rate: f64,
    /// Kill one node partway through.
    pub crash: bool,
    /// Longest wait for the network to settle after writes stop.
    pub settle: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            nodes: 5,
            duration: Duration::from_secs(30),
            rate: 10.0,
            crash: true,
            settle: Duration::from_secs(20),
        }
    }
}

/// What the demo ends with.
#[derive(Clone, Debug)]
pub struct DemoSummary {
    /// Per running node: peer id, snapshot-point ops, applied ops, digest.
    pub nodes: Vec<(String, u64, u64, String)>,
    pub ops_written: u64,
    /// Whether every running node reached the same snapshot point, equal to everything
    /// applied, with the same digest.
    pub converged: bool,
    pub crashed: Option<String>,
    /// Seconds into the demo when a survivor was first seen to have evicted the killed node.
    pub evicted_at: Option<f64>,
    /// Ops the killed node acknowledged that no survivor applied: it stored them and was
    /// killed before it could publish them.
    pub unpublished: u64,
}

struct Slot {
    node: Option<Node>,
    handle: NodeHandle,
    label: String,
    written: u64,
}

/// Runs the demo, drawing to stdout; returns the summary (also printed).
pub async fn run(config: DemoConfig) -> Result<DemoSummary, super::NodeError> {
    let dir = tempfile::tempdir().map_err(|e| super::NodeError::Transport(e.to_string()))?;
    let live = std::io::stdout().is_terminal();
    println!(
        "tidemark demo: {} nodes on 127.0.0.1, {} ops/s each, {} s{}",
        config.nodes,
        config.rate,
        config.duration.as_secs(),
        if config.crash {
            ", one node killed halfway"
        } else {
            ""
        }
    );
    let mut slots: Vec<Slot> = Vec::new();
    for i in 0..config.nodes.max(1) {
        let mut node_config = NodeConfig::local(dir.path().join(format!("node{i}")));
        node_config.api = None;
        if let Some(first) = slots.first() {
            node_config.bootstrap = first
                .node
                .as_ref()
                .expect("running")
                .listen_addrs()
                .to_vec();
        }
        let node = Node::start(node_config).await?;
        let handle = node.handle();
        let label = format!("node{i} {}", short(handle.peer_id()));
        if i == 0 {
            println!("bootstrap peer: {}", node.listen_addrs()[0]);
        }
        slots.push(Slot {
            node: Some(node),
            handle,
            label,
            written: 0,
        });
    }
    let start = Instant::now();
    let crash_at = start + config.duration / 2;
    let mut crashed: Option<usize> = None;
    let mut next_write = start;
    let write_every = Duration::from_secs_f64(1.0 / config.rate.max(0.001));
    let mut next_draw = start;
    let mut drawn_lines = 0usize;
    let mut events: Vec<String> = Vec::new();
    let mut evicted_at: Option<f64> = None;
    while start.elapsed() < config.duration {
        let now = Instant::now();
        if now >= next_write {
            next_write += write_every;
            for (i, slot) in slots.iter_mut().enumerate() {
                if crashed == Some(i) {
                    continue;
                }
                let key = format!("n{i}-{}", slot.written);
                if slot.handle.put(&key, Some("v")).await.is_ok() {
                    slot.written += 1;
                }
            }
        }
        if config.crash && crashed.is_none() && now >= crash_at && slots.len() > 2 {
            let victim = slots.len() - 1;
            if let Some(node) = slots[victim].node.take() {
                node.kill().await;
            }
            events.push(format!(
                "{:>5.1} s  killed {} (no goodbye): the others' snapshot points stall until it is evicted",
                start.elapsed().as_secs_f64(),
                slots[victim].label
            ));
            crashed = Some(victim);
        }
        note_eviction(&slots, crashed, start, &mut evicted_at, &mut events).await;
        if now >= next_draw {
            next_draw += if live {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(3)
            };
            let table = table(&slots, crashed, start).await;
            draw(&table, &events, live, &mut drawn_lines);
        }
        tokio::time::sleep_until(next_write.min(next_draw)).await;
    }
    events.push(format!(
        "{:>5.1} s  writes stopped; waiting for every snapshot point to reach every op",
        start.elapsed().as_secs_f64()
    ));
    let settle_until = Instant::now() + config.settle;
    let converged = loop {
        note_eviction(&slots, crashed, start, &mut evicted_at, &mut events).await;
        let done = settled(&slots, crashed).await;
        if done || Instant::now() >= settle_until {
            break done;
        }
        let table = table(&slots, crashed, start).await;
        draw(&table, &events, live, &mut drawn_lines);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    note_eviction(&slots, crashed, start, &mut evicted_at, &mut events).await;
    let table = table(&slots, crashed, start).await;
    draw(&table, &events, live, &mut drawn_lines);
    let mut summary = DemoSummary {
        nodes: Vec::new(),
        ops_written: slots.iter().map(|s| s.written).sum(),
        converged,
        crashed: crashed.map(|i| slots[i].label.clone()),
        evicted_at,
        unpublished: 0,
    };
    let mut victim_applied = 0;
    for (i, slot) in slots.iter().enumerate() {
        if crashed == Some(i) {
            continue;
        }
        if let Ok(status) = slot.handle.status().await {
            if let Some(victim) = crashed {
                let seq = status
                    .applied
                    .get(slots[victim].handle.peer_id())
                    .copied()
                    .unwrap_or(0);
                victim_applied = victim_applied.max(seq);
            }
            summary.nodes.push((
                slot.label.clone(),
                status.snapshot_point.values().sum(),
                status.applied.values().sum(),
                status.digest,
            ));
        }
    }
    if let Some(victim) = crashed {
        summary.unpublished = slots[victim].written.saturating_sub(victim_applied);
    }
    print_summary(&summary);
    for slot in slots.iter_mut() {
        if let Some(node) = slot.node.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), node.leave()).await;
        }
    }
    Ok(summary)
}

fn short(peer: &str) -> String {
    peer.chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

async fn table(slots: &[Slot], crashed: Option<usize>, start: Instant) -> Vec<String> {
    let mut lines = vec![
        format!("t = {:.1} s", start.elapsed().as_secs_f64()),
        format!(
            "{:<14} {:>8} {:>8} {:>9} {:>9} {:>6}  {}",
            "node", "phase", "members", "applied", "snapshot", "lag", "digest"
        ),
    ];
    for (i, slot) in slots.iter().enumerate() {
        if crashed == Some(i) {
            lines.push(format!("{:<14} {:>8}", slot.label, "killed"));
            continue;
        }
        match slot.handle.status().await {
            Ok(s) => {
                let applied: u64 = s.applied.values().sum();
                let sp: u64 = s.snapshot_point.values().sum();
                lines.push(format!(
                    "{:<14} {:>8} {:>8} {:>9} {:>9} {:>6}  {}",
                    slot.label,
                    s.phase,
                    s.members,
                    applied,
                    sp,
                    applied - sp.min(applied),
                    &s.digest[..12]
                ));
            }
            Err(_) => lines.push(format!("{:<14} {:>8}", slot.label, "stopped")),
        }
    }
    lines
}

fn draw(table: &[String], events: &[String], live: bool, drawn: &mut usize) {
    let mut out = String::new();
    if live && *drawn > 0 {
        let _ = write!(out, "\x1b[{}A\x1b[J", *drawn);
    }
    for line in table.iter().chain(events) {
        out.push_str(line);
        out.push('\n');
    }
    if !live {
        out.push('\n');
    }
    *drawn = table.len() + events.len();
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Once a survivor's map shows the killed node evicted: a line in the events, once.
async fn note_eviction(
    slots: &[Slot],
    crashed: Option<usize>,
    start: Instant,
    evicted_at: &mut Option<f64>,
    events: &mut Vec<String>,
) {
    let Some(victim) = crashed else { return };
    if evicted_at.is_some() {
        return;
    }
    let victim_id = slots[victim].handle.peer_id();
    for (i, slot) in slots.iter().enumerate() {
        if i == victim {
            continue;
        }
        let Ok(map) = slot.handle.network_map().await else {
            continue;
        };
        let evicted = map
            .members
            .iter()
            .any(|m| m.peer_id == victim_id && m.state == "evicted");
        if evicted {
            let t = start.elapsed().as_secs_f64();
            *evicted_at = Some(t);
            events.push(format!(
                "{t:>5.1} s  {} evicted by failure detection: the snapshot points move on without it",
                slots[victim].label
            ));
            return;
        }
    }
}

/// Every running node is a member, its snapshot point equals what it applied, and all agree.
async fn settled(slots: &[Slot], crashed: Option<usize>) -> bool {
    let mut seen: Option<(std::collections::BTreeMap<String, u64>, String)> = None;
    for (i, slot) in slots.iter().enumerate() {
        if crashed == Some(i) {
            continue;
        }
        let Ok(status) = slot.handle.status().await else {
            return false;
        };
        if status.phase != "member" || status.applied != status.snapshot_point {
            return false;
        }
        let Ok(state) = slot.handle.state(At::Snapshot).await else {
            return false;
        };
        let this = (state.at, state.digest);
        match &seen {
            None => seen = Some(this),
            Some(first) if *first != this => return false,
            Some(_) => {}
        }
    }
    seen.is_some()
}

fn print_summary(summary: &DemoSummary) {
    println!();
    println!("summary: {} ops written", summary.ops_written);
    if let Some(c) = &summary.crashed {
        println!("  killed halfway: {c}");
        match summary.evicted_at {
            Some(t) => println!("  evicted at {t:.1} s by failure detection"),
            None => println!("  not evicted before the end"),
        }
        if summary.unpublished > 0 {
            println!(
                "  {} op(s) written and applied nowhere: {c} acknowledged them (stored on its disk) and was killed before it could publish them; they reach the others if it restarts with its data dir",
                summary.unpublished
            );
        }
    }
    for (label, sp, applied, digest) in &summary.nodes {
        println!(
            "  {label:<14} snapshot point {sp:>6} ops, applied {applied:>6}, digest {}",
            &digest[..16]
        );
    }
    if summary.converged {
        println!("every node reached the same snapshot point, with the same digest.");
    } else {
        println!("the nodes did NOT reach the same snapshot point in time.");
    }
}
