//! The simulator as a user runs it: the built `tidemark-sim` binary.

use std::process::Command;

/// Runs the simulator; the map's snapshot point decides unless `args` name the aggregation
/// (the seeds of these tests were found with it).
fn sim(args: &[&str]) -> std::process::Output {
    let map = !args.iter().any(|a| a.starts_with("--aggregation"));
    Command::new(env!("CARGO_BIN_EXE_tidemark-sim"))
        .args(map.then_some("--map"))
        .args(args)
        .output()
        .expect("tidemark-sim runs")
}

fn without_wall_time(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let mut object = value.as_object().expect("an object").clone();
    assert!(object.remove("wall_s").is_some(), "wall_s is reported");
    assert!(
        object.remove("sim_speed").is_some(),
        "sim_speed is reported"
    );
    serde_json::to_string(&object).unwrap()
}

#[test]
fn the_same_seed_prints_the_same_json_apart_from_wall_time() {
    let args = [
        "--nodes",
        "12",
        "--ops",
        "300",
        "--seed",
        "42",
        "--loss",
        "0.05",
        "--duplicate",
        "0.02",
        "--reorder",
        "0.1",
        "--joins",
        "2",
        "--json",
    ];
    let a = sim(&args);
    let b = sim(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap(),
        String::from_utf8(b.stdout).unwrap(),
    );
    assert_eq!(without_wall_time(&a), without_wall_time(&b));
    let other = sim(&[
        "--nodes", "12", "--ops", "300", "--seed", "43", "--loss", "0.05", "--json",
    ]);
    assert_ne!(
        without_wall_time(&a),
        without_wall_time(&String::from_utf8(other.stdout).unwrap()),
        "a different seed gives a different run"
    );
}

#[test]
fn json_output_has_the_spec_fields() {
    let out = sim(&[
        "--nodes", "10", "--ops", "200", "--seed", "3", "--loss", "0.05", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "seed",
        "nodes",
        "ops",
        "violations",
        "converged",
        "bytes_per_op",
        "wall_s",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    for field in ["dissemination_ms", "sp_lag_ms"] {
        assert!(v[field]["p50"].as_f64().unwrap() > 0.0, "{field}.p50");
        assert!(v[field]["p99"].as_f64().unwrap() >= v[field]["p50"].as_f64().unwrap());
    }
    assert_eq!(v["violations"], 0);
    assert_eq!(v["converged"], true);
    assert_eq!(v["ops"], 200);
    assert!(
        v["sp_lag_ms"]["p50"].as_f64().unwrap() >= v["dissemination_ms"]["p50"].as_f64().unwrap(),
        "an op is stable everywhere only after it is applied everywhere"
    );
}

#[test]
fn csv_and_plot_are_written() {
    let dir = std::env::temp_dir().join(format!("tidemark-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("lag.csv");
    let svg = dir.join("convergence.svg");
    let out = sim(&[
        "--nodes",
        "8",
        "--ops",
        "200",
        "--seed",
        "5",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("t_ms,created,applied_everywhere,stable_everywhere,sp_lag_ms")
    );
    let last: Vec<&str> = lines.last().unwrap().split(',').collect();
    assert_eq!(last[1], "200");
    assert_eq!(last[3], "200", "every op ends inside every snapshot point");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("snapshot point"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_batch_of_seeds_reports_one_summary() {
    let out = sim(&[
        "--seeds", "1..6", "--nodes", "8", "--ops", "100", "--loss", "0.1", "--joins", "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"], 6);
    assert_eq!(v["violations"], 0);
    assert_eq!(v["liveness_failures"], 0);
}

/// A batch names the run behind each worst-case latency, and that seed alone gives it again.
#[test]
fn a_batch_names_the_seed_of_its_worst_latencies() {
    let flags = ["--faults", "all", "--nodes", "10", "--ops", "100"];
    let mut args = flags.to_vec();
    // seeds whose runs, under the default cost model, evict a crashed member, rejoin a
    // running one, and send a stale notice
    args.extend(["--seeds", "106..111", "--json"]);
    let out = sim(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (figure, per_run) in [
        ("crash_to_drop", "crash_to_drop_ms"),
        ("stale_to_rejoin", "stale_to_rejoin_ms"),
    ] {
        let max = batch[format!("{figure}_max_ms")].as_f64().unwrap();
        assert!(max > 0.0, "{figure}: the batch exercises it");
        let seed = batch[format!("{figure}_max_seed")]
            .as_u64()
            .expect("a seed");
        let seed = seed.to_string();
        let mut args = flags.to_vec();
        args.extend(["--seed", &seed, "--json"]);
        let single: serde_json::Value = serde_json::from_slice(&sim(&args).stdout).unwrap();
        assert_eq!(single[per_run]["max"].as_f64(), Some(max), "{figure}");
    }
    // the stale rule shows in a sweep: how many notices made members rejoin
    let mut notices = 0;
    for seed in 106..=111 {
        let seed = seed.to_string();
        let mut args = flags.to_vec();
        args.extend(["--seed", &seed, "--json"]);
        let single: serde_json::Value = serde_json::from_slice(&sim(&args).stdout).unwrap();
        notices += single["faults"]["stale_notices"].as_u64().unwrap();
    }
    assert!(notices > 0, "these seeds send members stale notices");
    assert_eq!(batch["stale_notices"].as_u64(), Some(notices));
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = sim(&["--loss", "1.5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a probability"));
    let out = sim(&["--seeds", "9..3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

/// A small `--faults all` run of `seed`.
fn swarm(seed: &str) -> std::process::Output {
    sim(&[
        "--faults",
        "all",
        "--nodes",
        "10",
        "--ops",
        "100",
        "--seed",
        seed,
        "--safety-phase-s",
        "8",
        "--json",
    ])
}

#[test]
fn swarm_faults_are_drawn_from_the_seed_and_reported() {
    let a = swarm("3");
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = swarm("3");
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    assert_eq!(
        without_wall_time(&a),
        without_wall_time(&b),
        "deterministic"
    );
    let report: serde_json::Value = serde_json::from_str(&a).unwrap();
    let config = &report["fault_config"];
    assert_eq!(config["safety_phase"]["secs"], 8);
    for field in [
        "crash_rate",
        "partition_rate",
        "churn_rate",
        "restart",
        "lost_disk",
    ] {
        assert!(config[field].is_number(), "fault_config.{field}");
    }
    for field in [
        "crashes",
        "partitions",
        "evictions",
        "rejoins",
        "ops_republished",
    ] {
        assert!(report["faults"][field].is_u64(), "faults.{field}");
    }
    assert!(report["crash_to_drop_ms"]["p99"].is_number());
    assert!(report["stale_to_rejoin_ms"]["p99"].is_number());
    // another seed draws another mix
    let other: serde_json::Value = serde_json::from_slice(&swarm("4").stdout).unwrap();
    assert_ne!(other["fault_config"], report["fault_config"]);
}

#[test]
fn an_unknown_fault_is_refused() {
    let out = sim(&["--faults", "meteor"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown fault"), "{err}");
}

#[test]
fn the_partitions_mode_runs_sequences_of_partitions_and_nothing_else() {
    let out = sim(&[
        "--faults",
        "partitions",
        "--nodes",
        "6",
        "--ops",
        "200",
        "--seed",
        "7",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let faults = &report["faults"];
    assert!(
        faults["partitions"].as_u64().unwrap() >= 3,
        "a sequence of partitions: {faults}"
    );
    for none in ["crashes", "joins", "leaves"] {
        assert_eq!(faults[none], 0, "no {none}: {faults}");
    }
    assert!(faults["views_decided"].as_u64().unwrap() >= 1, "{faults}");
}

#[test]
fn with_the_aggregation_deciding_members_in_the_view_stop_flooding_their_heartbeats() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--nodes",
            "60",
            "--ops",
            "1000",
            "--rate",
            "200",
            "--seed",
            "2",
            "--aggregation-decides",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = sim(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["violations"], 0);
        assert_eq!(v["converged"], true);
        v
    };
    let liveness = run(&[]);
    let flood = run(&["--flood-heartbeats"]);
    assert!(
        flood["sim_time_s"].as_f64().unwrap() >= 4.0,
        "several heartbeats"
    );
    let status = |v: &serde_json::Value| {
        ["status", "report"]
            .iter()
            .map(|k| v["bytes_by_kind"][k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    assert!(
        status(&liveness) * 10.0 < status(&flood),
        "records in status: {} bytes with the aggregation's liveness, {} flooding heartbeats",
        status(&liveness),
        status(&flood)
    );
    assert!(liveness["status_share"].as_f64() < flood["status_share"].as_f64());
}
