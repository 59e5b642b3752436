//! Every seed that once failed (`sim/regressions.txt`) runs again: no safety violation, no
//! run over budget, and L1 holds unless the line names the known limit that still stops it.

use clap::Parser;
use tidemark_sim::cli::Args;

struct Case {
    flags: String,
    expect: String,
    caught: String,
}

fn cases() -> Vec<Case> {
    let text = include_str!("../regressions.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut parts = line.split('|').map(str::trim);
            let (flags, expect, caught) = (parts.next(), parts.next(), parts.next());
            Case {
                flags: flags.expect("flags").to_owned(),
                expect: expect.expect("an expectation").to_owned(),
                caught: caught.expect("what it caught").to_owned(),
            }
        })
        .collect()
}

/// What went wrong with `case` now, if anything.
fn check(case: &Case) -> Option<String> {
    let args =
        Args::try_parse_from(std::iter::once("tidemark-sim").chain(case.flags.split_whitespace()))
            .expect("valid flags");
    let report = tidemark_sim::run(args.config(args.seed));
    let cause = report.liveness_cause.map(|c| c.name()).unwrap_or("ok");
    let fine = report.safety_violations == 0
        && !report.budget_exceeded
        && (cause == "ok" || cause == case.expect);
    (!fine).then(|| {
        format!(
            "`tidemark-sim {}` (once caught: {}; expected {}) now gives {} safety violations, liveness {cause}, budget exceeded {}: {:?}",
            case.flags,
            case.caught,
            case.expect,
            report.safety_violations,
            report.budget_exceeded,
            report.violation_samples
        )
    })
}

#[test]
fn every_seed_that_once_failed_passes_or_fails_only_on_a_named_known_limit() {
    let cases = cases();
    assert!(cases.len() > 100, "the list is read");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                if let Some(failure) = check(case) {
                    failures.lock().unwrap().push(failure);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
