//! End to end, as root, inside Debian's 6.1 under qemu booted with each lockdown mode: in
//! confidentiality mode the kernel denies tracing, and the sidecar says so and how to fix it
//! (exit 1) instead of blaming tracefs or a hook; in integrity mode it traces as usual.

mod support;

use std::{path::Path, time::Duration};

use support::*;

#[test]
fn a_locked_down_kernel_is_named_with_the_fix_and_integrity_mode_traces() {
    require_root();
    let binaries = qemu::release_binaries("otel-sendmmsg");
    let guest = qemu::Guest::debian_6_1(&[
        (&binaries["otel-sendmmsg"], Path::new(SIDECAR)),
        (&binaries["sendmmsg-workload"], Path::new(WORKLOAD)),
    ]);
    let script = format!(
        r#"echo "LOCKDOWN $(cat /sys/kernel/security/lockdown)"
NO_COLOR=1 RUST_LOG=info {SIDECAR} >/tmp/out 2>/tmp/err &
pid=$!; i=0
while ! grep -q "ready:" /tmp/err && kill -0 $pid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done
{WORKLOAD} udp4 >/tmp/calls
kill -INT $pid 2>/dev/null; wait $pid; echo "SIDECAR exit=$?"
sed "s/^/LOG /" /tmp/err; sed "s/^/SPAN /" /tmp/out; sed "s/^/CALL /" /tmp/calls
"#
    );
    for mode in ["confidentiality", "integrity"] {
        let run = guest.run_booted_with(&format!("lockdown={mode}"), &script, Duration::from_secs(300));
        let console = run.console.replace('\r', "");
        // The console's first line starts with the terminal's reset sequence.
        let lines = |prefix: &str| -> Vec<String> {
            console.lines().filter_map(|l| l.split_once(prefix)).map(|(_, rest)| rest.to_owned()).collect()
        };
        let ctx = format!("lockdown={mode}, {:?}:\n{console}", run.duration);
        assert!(
            lines("LOCKDOWN ").iter().any(|l| l.contains(&format!("[{mode}]"))),
            "the guest is not in {mode} mode: {ctx}"
        );
        let log = lines("LOG ").join("\n");
        assert!(!log.contains("panicked"), "{ctx}");
        let call: CallReport = serde_json::from_str(&lines("CALL ")[0]).expect("the workload's call");
        let spans: Vec<String> = lines("SPAN ")
            .into_iter()
            .filter(|l| l.contains(&format!(" process.pid={} ", call.pid)))
            .collect();
        match mode {
            "confidentiality" => {
                assert!(console.contains("SIDECAR exit=1"), "an environment error, exit 1: {ctx}");
                assert!(log.contains("locked down in confidentiality mode"), "{ctx}");
                assert!(log.contains("boot with lockdown=integrity"), "the fix: {ctx}");
                assert!(!log.contains("tracefs is not mounted"), "not a tracefs problem: {ctx}");
                assert!(spans.is_empty(), "{ctx}");
            }
            _ => {
                assert!(console.contains("SIDECAR exit=0"), "{ctx}");
                assert_eq!(spans.len(), 1, "the workload's one call: {ctx}");
                assert!(spans[0].contains(&format!(" sendmmsg.sent={} ", call.ret)), "{ctx}");
            }
        }
    }
}
