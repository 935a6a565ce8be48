//! Property-based fuzzing of request validation and of the config/catalog parser: whatever a client sends or
//! a config file says, validation never panics, and a plan it accepts is always within its bounds. Failures
//! proptest finds are kept in `tests/fuzz_validation.proptest-regressions` and replayed first.

use std::collections::HashMap;
use std::time::Duration;

use forkpool::config::{Config, PlanError};
use forkpool::pb;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}",
        "[ -~]{0,12}",
        any::<String>(),
        Just("a\0b".to_string()),
        Just("K=V".to_string()),
        Just("echo".to_string()),
        Just("sleep".to_string()),
        Just("cat".to_string()),
    ]
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of(
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn start_job() -> impl Strategy<Value = pb::StartJob> {
    (
        text(),
        proptest::collection::vec(text(), 0..4),
        proptest::collection::hash_map(text(), text(), 0..3),
        duration(),
        proptest::collection::vec(text(), 0..4),
        duration(),
        proptest::option::of((any::<u32>(), any::<u32>(), any::<bool>(), text())),
        proptest::collection::vec(
            (text(), 0u64..2048, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..4)),
            0..3,
        ),
        proptest::collection::vec(text(), 0..3),
        duration(),
    )
        .prop_map(
            |(job, args, env, timeout, command, kill_grace, terminal, inputs, outputs, heartbeat_interval)| {
                pb::StartJob {
                    job,
                    args,
                    env: env.into_iter().collect::<HashMap<_, _>>(),
                    timeout,
                    command,
                    kill_grace,
                    terminal: terminal.map(|(rows, cols, no_echo, term)| pb::Terminal { rows, cols, no_echo, term }),
                    inputs: inputs
                        .into_iter()
                        .map(|(path, size, mode, content)| pb::InputFile { path, size, mode, content })
                        .collect(),
                    outputs,
                    heartbeat_interval,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_and_accepted_plans_are_bounded(start in start_job(), raw in any::<bool>()) {
        let config = Config { allow_raw_commands: raw, raw_max_timeout: Some(Duration::from_secs(60)), ..Config::default() };
        let job = start.job.clone();
        match config.plan(start) {
            Ok(plan) => {
                prop_assert!(!plan.argv.is_empty() && !plan.argv[0].is_empty());
                prop_assert!(plan.argv.iter().all(|a| !a.contains('\0')));
                prop_assert!(plan.env.iter().all(|(k, v)| !k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0')));
                prop_assert!(plan.kill_grace <= config.max_kill_grace);
                let max = config.jobs.iter().find(|j| j.name == job).and_then(|j| j.max_timeout).or(config.raw_max_timeout);
                prop_assert!(plan.timeout.is_some_and(|t| max.is_none_or(|m| t <= m)));
                prop_assert!(raw || !job.is_empty(), "a raw command was accepted with raw commands off");
                if let Some(files) = &plan.files {
                    for path in files.inputs.iter().map(|i| &i.path).chain(files.outputs.iter().map(|o| &o.pattern)) {
                        prop_assert!(forkpool::config::files::check_path("p", path).is_ok(), "{path:?} accepted");
                    }
                    prop_assert!(files.inputs.iter().map(|i| i.size).sum::<u64>() <= files.limits.input_bytes);
                }
                if let Some(t) = plan.terminal {
                    prop_assert!(t.rows > 0 && t.cols > 0);
                    prop_assert!(plan.env.get("TERM").is_some_and(|t| !t.is_empty()));
                }
            }
            Err(
                PlanError::InvalidArgument(m)
                | PlanError::NotFound(m)
                | PlanError::PermissionDenied(m)
                | PlanError::ResourceExhausted(m),
            ) => {
                prop_assert!(!m.is_empty());
            }
        }
    }

    #[test]
    fn the_config_parser_never_panics(text in "[ -~\n]{0,200}") {
        let _ = Config::parse(&text);
    }

    #[test]
    fn structured_configs_parse_or_fail_cleanly(
        workers in any::<i64>(),
        grace in "[0-9]{0,4}(ms|s|m|h|x)?",
        name in "[ -~]{0,8}",
        command in proptest::collection::vec("[ -~]{0,6}", 0..3),
        memory in "[0-9]{0,12}(KiB|MiB|GiB|parsec)?",
    ) {
        let text = format!(
            "workers = {workers}\ndefault_kill_grace = {grace:?}\n[limits]\nmemory = {memory:?}\n[[job]]\nname = {name:?}\ncommand = {command:?}\n"
        );
        if let Ok(config) = Config::parse(&text) {
            prop_assert!(config.default_kill_grace <= config.max_kill_grace);
            prop_assert!(config.jobs.iter().all(|j| !j.name.is_empty() && !j.command.is_empty() && !j.command[0].is_empty()));
        }
    }
}

/// Findings kept as plain regression tests.
#[test]
fn regressions_found_by_fuzzing() {
    let config = Config { allow_raw_commands: true, ..Config::default() };
    // A timeout of i64::MAX seconds must not overflow the deadline arithmetic: it is capped or refused.
    let start = pb::StartJob {
        command: vec!["true".into()],
        timeout: Some(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 }),
        ..Default::default()
    };
    assert!(config.plan(start).is_ok_and(|plan| plan.timeout.is_some()));
    // nanos outside 0..1e9 is malformed.
    let start = pb::StartJob {
        command: vec!["true".into()],
        kill_grace: Some(prost_types::Duration { seconds: 1, nanos: 1_000_000_000 }),
        ..Default::default()
    };
    assert!(matches!(config.plan(start), Err(PlanError::InvalidArgument(_))));
}
