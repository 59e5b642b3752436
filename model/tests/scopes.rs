//! CI checks of the model: the small scope exhaustively and the join scope up to its
//! depth bound, both in a debug build within seconds; every property must hold, every
//! `sometimes` property must be met, and the counts must clear a floor so that a model that
//! stopped exploring cannot pass.

use stateright::Expectation;
use tidemark_model::properties;
use tidemark_model::{check, Outcome, Scope, Search};

fn run(scope: Scope) -> Outcome {
    let search = Search {
        strategy: scope.strategy,
        threads: 2,
        budget: None,
        progress: None,
    };
    check(scope, search)
}

fn assert_all_hold(outcome: &Outcome, floor: usize) {
    for verdict in &outcome.verdicts {
        assert!(
            verdict.holds(),
            "{} ({:?}) fails; path: {:#?}",
            verdict.name,
            verdict.expectation,
            verdict.path
        );
    }
    assert!(outcome.exhaustive, "the run was cut short");
    assert!(
        outcome.unique_states > floor,
        "only {} unique states (floor {floor})",
        outcome.unique_states
    );
}

#[test]
fn small_scope_is_exhaustively_safe_and_live() {
    let outcome = run(Scope::small());
    assert!(!outcome.depth_bounded, "the small scope closes by itself");
    assert_all_hold(&outcome, 2_000);
    assert!(outcome.settle_checks > 0, "the L1 check ran");
    let names: Vec<_> = outcome.verdicts.iter().map(|v| v.name).collect();
    for name in [
        properties::I1,
        properties::I2,
        properties::I3,
        properties::I4,
        properties::L1_SETTLE,
        properties::L1_REACHED,
    ] {
        assert!(names.contains(&name), "{name} is checked");
    }
}

#[test]
fn join_scope_keeps_i3_for_a_registered_joiner() {
    let outcome = run(Scope::join());
    assert_all_hold(&outcome, 20_000);
    let joined = outcome
        .verdicts
        .iter()
        .find(|v| v.name == properties::JOINED)
        .expect("the joiner property is checked");
    assert_eq!(joined.expectation, Expectation::Sometimes);
    assert!(joined.path.is_some(), "the joiner becomes a member");
}

#[test]
fn views_scope_reaches_a_view_change_that_evicts_the_crashed_member() {
    // random walks for a bounded time: every `always` property must hold on every state
    // walked, and a decided view that evicts the crashed founder must be among them
    let scope = Scope::views();
    let search = Search {
        strategy: scope.strategy,
        threads: 2,
        budget: Some(std::time::Duration::from_secs(30)),
        progress: None,
    };
    let outcome = check(scope, search);
    for verdict in &outcome.verdicts {
        if verdict.expectation == Expectation::Always {
            assert!(
                verdict.holds(),
                "{} fails; path: {:#?}",
                verdict.name,
                verdict.path
            );
        }
    }
    let changed = outcome
        .verdicts
        .iter()
        .find(|v| v.name == properties::VIEW_CHANGED)
        .expect("the view-change property is checked");
    assert!(changed.path.is_some(), "no walk reached a view change");
    let names: Vec<_> = outcome.verdicts.iter().map(|v| v.name).collect();
    assert!(names.contains(&properties::I6), "I6 is checked");
    assert!(outcome.unique_states > 1_000, "{}", outcome.unique_states);
}
