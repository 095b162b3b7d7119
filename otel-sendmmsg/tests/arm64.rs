//! arm64: the sidecar and the workload cross-built for aarch64 with Debian's cross toolchain, run
//! inside Debian 12's arm64 cloud kernels under `qemu-system-aarch64` (software emulation), once
//! per attach family: what each family chose, as the start-up log says it, and the spans of the
//! workload's calls on the console, exact.
//!
//! One boot per kernel: the sidecar is started in it once per family (`auto` and each family
//! forced), the workload makes three calls (`udp4`: 8 messages sent; `refused-mid-batch`: 2 sent,
//! then EMSGSIZE; `bad-fd`: EBADF) and the sidecar is stopped. The guest first prints the kernel
//! facts the choices follow from (BTF, ftrace direct calls, the syscall tracepoints,
//! `sock:sock_send_length`, kprobes, the arm64 syscall symbol), which are checked too: a table
//! that no longer matches the kernel fails as such, not as a wrong choice.
//!
//! The kprobe family reads the syscall's arguments from arm64's registers, which the BPF object
//! must be built for (build.rs): the spans' `sockfd` and `vlen` against what the workload passed
//! show it, and an object built with x86-64's `pt_regs` fails here (its kretprobes read garbage
//! returns, so the family is refused and `auto` finds no per-message hook).

mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use support::{qemu, require_root, CallReport, SIDECAR, WORKLOAD};

/// Bounds one boot: four sidecar start-ups (BTF parsing and the self-tests), each with the
/// workload, under software emulation of another architecture.
const BOOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The families in the order the guest runs them.
const FAMILIES: [&str; 4] = ["auto", "fentry", "tracepoint", "kprobe"];

/// The workload's scenarios, one call each, in order.
const SCENARIOS: [&str; 3] = ["udp4", "refused-mid-batch", "bad-fd"];

/// What the guest's kernel offers, as the script's `FACT` lines report it.
#[derive(Debug, PartialEq, Eq)]
struct Facts {
    /// `/sys/kernel/btf/vmlinux`: what fentry/fexit and the identity capture need.
    btf: bool,
    /// `register_ftrace_direct` in /proc/kallsyms: ftrace direct calls, which a BPF trampoline
    /// on a kernel function (fentry/fexit) is attached through; arm64 has them from Linux 6.4.
    ftrace_direct_calls: bool,
    /// `syscalls:sys_enter_sendmmsg` / `sys_exit_sendmmsg`.
    syscall_tracepoints: bool,
    /// `sock:sock_send_length` (Linux >= 6.3).
    sock_send_length: bool,
    /// tracefs `kprobe_events` and the kprobe PMU.
    kprobes: bool,
    /// `__arm64_sys_sendmmsg` in /proc/kallsyms: the kprobe family's symbol.
    arm64_syscall_symbol: bool,
}

/// What the sidecar must do with one family on a kernel.
enum Outcome {
    /// Traces, with these hooks, as the start-up log names them.
    Chooses {
        entry_exit: &'static str,
        message: &'static str,
        /// Every line of the choice that says why another hook is not used ("not using ...",
        /// "not trying ..."), in the log's order: exactly these.
        passed_over: &'static [&'static str],
    },
    /// Refused at start-up: exit code 2 and the kernel's reason.
    Refused { reason: &'static str },
}

/// A kernel and what each family does on it, in [`FAMILIES`]' order.
struct Kernel {
    debian: qemu::Debian,
    facts: Facts,
    outcomes: [(&'static str, Outcome); 4],
}

const FENTRY_SYS_SENDMMSG: &str = "fexit __sys_sendmmsg, fentry __sys_sendmmsg";
const FEXIT_PROTOCOL: &str = "fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg";
const KRETPROBE_PROTOCOL: &str = "kretprobe inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg";
const SYSCALL_TRACEPOINTS: &str =
    "tracepoint syscalls:sys_exit_sendmmsg, tracepoint syscalls:sys_enter_sendmmsg";
/// OTEL_SENDMMSG_MAX_INFLIGHT's default, 4096, is also the kernel's limit on maxactive.
const KPROBE_SYSCALL: &str = "kretprobe __arm64_sys_sendmmsg (maxactive 4096), kprobe __arm64_sys_sendmmsg";
/// What the kernel answers a BPF trampoline on a kernel function without ftrace direct calls:
/// ENOTSUPP, the kernel's internal 524, which has no name in user space.
const NO_TRAMPOLINE: &str =
    "attach refused: `bpf_raw_tracepoint_open` failed: Unknown error 524 (os error 524)";
/// As on x86-64, `sock_sendmsg` is off sendmmsg's path on both kernels (from 6.6 on; Debian's
/// 6.1 carries the fix "net: prevent rewrite of msg_name in sock_sendmsg()").
const SOCK_SENDMSG_SILENT: &str = "not using kretprobe sock_sendmsg for messages: attached, but saw 0 of \
     call 0's 3 messages (results [], sent [11, 12, 13])";
const NO_SOCK_SEND_LENGTH: &str = "not using tracepoint sock:sock_send_length for messages: tracepoint \
     sock:sock_send_length not present (added in Linux 6.3)";

/// Debian 12's 6.1 on arm64: BTF and kprobes, but no ftrace direct calls (arm64 has them from
/// 6.4), so every fentry/fexit attach is refused; no `sock:sock_send_length`. `auto` takes the
/// syscall tracepoints, and for messages the protocol functions' kretprobes.
const DEBIAN_6_1: Kernel = Kernel {
    debian: qemu::Debian::V6_1,
    facts: Facts {
        btf: true,
        ftrace_direct_calls: false,
        syscall_tracepoints: true,
        sock_send_length: false,
        kprobes: true,
        arm64_syscall_symbol: true,
    },
    outcomes: [
        (
            "auto",
            Outcome::Chooses {
                entry_exit: SYSCALL_TRACEPOINTS,
                message: KRETPROBE_PROTOCOL,
                passed_over: &[
                    "not using fentry for entry/exit: attach refused: `bpf_raw_tracepoint_open` failed: \
                     Unknown error 524 (os error 524)",
                    "not trying kprobe for entry/exit: a cheaper hook works",
                    NO_SOCK_SEND_LENGTH,
                    "not using fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg for messages: attach \
                     refused: `bpf_raw_tracepoint_open` failed: Unknown error 524 (os error 524)",
                    SOCK_SENDMSG_SILENT,
                ],
            },
        ),
        ("fentry", Outcome::Refused { reason: NO_TRAMPOLINE }),
        (
            "tracepoint",
            Outcome::Chooses {
                entry_exit: SYSCALL_TRACEPOINTS,
                message: KRETPROBE_PROTOCOL,
                passed_over: &[
                    NO_SOCK_SEND_LENGTH,
                    "not using fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg for messages: attach \
                     refused: `bpf_raw_tracepoint_open` failed: Unknown error 524 (os error 524)",
                    SOCK_SENDMSG_SILENT,
                ],
            },
        ),
        ("kprobe", KPROBE_ON_BOTH),
    ],
};

/// The kprobe family on both arm64 kernels: the syscall's kprobe/kretprobe, and the protocol
/// functions' kretprobes (`sock_sendmsg` is off sendmmsg's path on both).
const KPROBE_ON_BOTH: Outcome = Outcome::Chooses {
    entry_exit: KPROBE_SYSCALL,
    message: KRETPROBE_PROTOCOL,
    passed_over: &[
        SOCK_SENDMSG_SILENT,
        "not trying fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg, tracepoint \
         sock:sock_send_length for messages: a cheaper hook works",
    ],
};

/// Debian 12's 6.12 on arm64: BTF, ftrace direct calls, kprobes, `sock:sock_send_length`: each
/// family gets what it gets on x86-64's 6.12.
const DEBIAN_6_12: Kernel = Kernel {
    debian: qemu::Debian::V6_12,
    facts: Facts {
        btf: true,
        ftrace_direct_calls: true,
        syscall_tracepoints: true,
        sock_send_length: true,
        kprobes: true,
        arm64_syscall_symbol: true,
    },
    outcomes: [
        (
            "auto",
            Outcome::Chooses {
                entry_exit: FENTRY_SYS_SENDMMSG,
                message: FEXIT_PROTOCOL,
                passed_over: &[
                    "not trying tracepoint, kprobe for entry/exit: a cheaper hook works",
                    "not trying tracepoint sock:sock_send_length, kretprobe sock_sendmsg, kretprobe \
                     inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg for messages: a cheaper hook works",
                ],
            },
        ),
        (
            "fentry",
            Outcome::Chooses {
                entry_exit: FENTRY_SYS_SENDMMSG,
                message: FEXIT_PROTOCOL,
                passed_over: &["not trying tracepoint sock:sock_send_length, kretprobe sock_sendmsg, \
                     kretprobe inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg for messages: a cheaper hook works"],
            },
        ),
        (
            "tracepoint",
            Outcome::Chooses {
                entry_exit: SYSCALL_TRACEPOINTS,
                message: "tracepoint sock:sock_send_length",
                passed_over: &["not trying fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg, kretprobe \
                     sock_sendmsg, kretprobe inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg for messages: a \
                     cheaper hook works"],
            },
        ),
        ("kprobe", KPROBE_ON_BOTH),
    ],
};

#[test]
fn the_cross_built_sidecar_traces_on_debian_6_1_arm64_for_every_family_it_offers() {
    traces_on(&DEBIAN_6_1);
}

#[test]
fn the_cross_built_sidecar_traces_on_debian_6_12_arm64_for_every_family_it_offers() {
    traces_on(&DEBIAN_6_12);
}

/// The aarch64 release build of the sidecar and the workload (built once; the second test finds
/// it up to date), and one guest at a time: a guest takes both of this machine's cores.
fn cross_built() -> (std::sync::MutexGuard<'static, ()>, HashMap<String, PathBuf>) {
    static ONE_GUEST: Mutex<()> = Mutex::new(());
    let guard = ONE_GUEST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let binaries = qemu::cross_release_binaries(qemu::Arch::Aarch64, "otel-sendmmsg");
    eprintln!("aarch64 release build: {:?}", started.elapsed());
    (guard, binaries)
}

/// The guest's script: the kernel's facts, then per family the sidecar with the console
/// exporter around the workload's calls; everything printed as `RUN <family> ...` lines.
fn script() -> String {
    let mut script = String::from(
        r#"echo "KERNEL $(uname -r) $(uname -m)"
fact() { if [ -e "$2" ]; then echo "FACT $1=yes"; else echo "FACT $1=no"; fi; }
fact btf /sys/kernel/btf/vmlinux
fact syscall_tracepoints /sys/kernel/tracing/events/syscalls/sys_enter_sendmmsg
fact sock_send_length /sys/kernel/tracing/events/sock/sock_send_length
if grep -q -e " register_ftrace_direct$" -e " register_ftrace_direct_multi$" /proc/kallsyms; then
  echo "FACT ftrace_direct_calls=yes"; else echo "FACT ftrace_direct_calls=no"; fi
if [ -e /sys/kernel/tracing/kprobe_events ] && [ -e /sys/bus/event_source/devices/kprobe ]; then
  echo "FACT kprobes=yes"; else echo "FACT kprobes=no"; fi
if grep -q " __arm64_sys_sendmmsg$" /proc/kallsyms; then
  echo "FACT arm64_syscall_symbol=yes"; else echo "FACT arm64_syscall_symbol=no"; fi
"#,
    );
    for family in FAMILIES {
        script.push_str(&format!(
            r#"start=$(cut -d' ' -f1 /proc/uptime)
OTEL_SENDMMSG_ATTACH={family} NO_COLOR=1 RUST_LOG=info OTEL_TRACES_EXPORTER=console \
  {SIDECAR} >/tmp/spans 2>/tmp/log-{family} &
pid=$!; i=0
while ! grep -qs "ready:" /tmp/log-{family} && kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do
  sleep 0.2; i=$((i+1))
done
echo "RUN {family} ready after $start..$(cut -d' ' -f1 /proc/uptime) s"
if kill -0 $pid 2>/dev/null; then
  {WORKLOAD} {scenarios} >/tmp/calls; echo "RUN {family} workload exit=$?"
  kill -INT $pid
fi
wait $pid; echo "RUN {family} sidecar exit=$?"
sed "s/^/RUN {family} LOG /" /tmp/log-{family}; sed "s/^/RUN {family} SPAN /" /tmp/spans
sed "s/^/RUN {family} CALL /" /tmp/calls 2>/dev/null; rm -f /tmp/calls
"#,
            scenarios = SCENARIOS.join(" "),
        ));
    }
    script
}

fn traces_on(table: &Kernel) {
    require_root();
    let (_one_guest, binaries) = cross_built();
    let guest = qemu::Guest::debian_on(
        qemu::Arch::Aarch64,
        table.debian,
        &[
            (binaries["otel-sendmmsg"].as_path(), Path::new(SIDECAR)),
            (binaries["sendmmsg-workload"].as_path(), Path::new(WORKLOAD)),
        ],
    );
    let kernel = guest.kernel_release();
    let run = guest.run(&script(), BOOT_TIMEOUT);
    let console = run.console.replace('\r', "");
    eprintln!("{kernel} guest, {:?}:\n{console}", run.duration);
    let ctx = format!("{kernel} (arm64)");
    // The console's first line starts with the terminal's reset sequence: lines are found by
    // their marker anywhere in them.
    let lines = |marker: &str| -> Vec<&str> {
        console.lines().filter_map(|l| l.split_once(marker)).map(|(_, rest)| rest).collect()
    };
    assert_eq!(lines("KERNEL "), [format!("{kernel} aarch64")], "{ctx}: the guest did not boot");
    let fact = |name: &str| match lines(&format!("FACT {name}="))[..] {
        ["yes"] => true,
        ["no"] => false,
        _ => panic!("{ctx}: no fact {name}"),
    };
    let observed = Facts {
        btf: fact("btf"),
        ftrace_direct_calls: fact("ftrace_direct_calls"),
        syscall_tracepoints: fact("syscall_tracepoints"),
        sock_send_length: fact("sock_send_length"),
        kprobes: fact("kprobes"),
        arm64_syscall_symbol: fact("arm64_syscall_symbol"),
    };
    assert_eq!(observed, table.facts, "{ctx}: the kernel is not the one the table describes");
    for (family, outcome) in &table.outcomes {
        let prefix = format!("RUN {family} ");
        let run: Vec<&str> = lines(&prefix);
        let field = |key: &str| run.iter().find_map(|l| l.strip_prefix(key));
        let ctx = format!("OTEL_SENDMMSG_ATTACH={family} on {ctx}");
        eprintln!("{ctx}: {}", field("ready after ").unwrap_or("?"));
        let log: Vec<&str> = run.iter().filter_map(|l| l.strip_prefix("LOG ")).collect();
        let logged = |text: &str| log.iter().any(|l| l.contains(text));
        assert!(!logged("panicked"), "{ctx}: {log:#?}");
        match outcome {
            Outcome::Refused { reason } => {
                assert_eq!(field("sidecar exit="), Some("2"), "{ctx}: {log:#?}");
                let refusal = format!("OTEL_SENDMMSG_ATTACH={family}: this kernel cannot give it: {reason}");
                assert!(logged(&refusal), "{ctx}: {log:#?}");
                assert_eq!(field("workload exit="), None, "{ctx}: the sidecar was not running");
                assert!(!logged("ready:"), "{ctx}: {log:#?}");
            }
            Outcome::Chooses { entry_exit, message, passed_over } => {
                assert_eq!(field("sidecar exit="), Some("0"), "{ctx}: {log:#?}");
                assert_eq!(field("workload exit="), Some("0"), "{ctx}: {log:#?}");
                assert!(
                    logged(&format!("entry/exit hooks: {entry_exit} (self-test passed)")),
                    "{ctx}: {log:#?}"
                );
                assert!(
                    logged(&format!("per-message hook: {message} (self-test saw every message)")),
                    "{ctx}: {log:#?}"
                );
                let choice = "otel_sendmmsg::probes::choose: ";
                let reasons: Vec<&str> = log
                    .iter()
                    .filter_map(|l| l.split_once(choice).map(|(_, message)| message))
                    .filter(|m| m.starts_with("not using ") || m.starts_with("not trying "))
                    .collect();
                assert_eq!(reasons, *passed_over, "{ctx}: why other hooks are not used");
                if *message == KRETPROBE_PROTOCOL {
                    // They see every send of the host: as many calls inside at once as allowed.
                    let kretprobes = ["inet_sendmsg", "inet6_sendmsg", "unix_dgram_sendmsg"]
                        .map(|f| format!("kretprobe {f} (maxactive 4096)"))
                        .join(", ");
                    assert!(
                        logged(&format!("(self-test saw every message): {kretprobes}")),
                        "{ctx}: {log:#?}"
                    );
                }
                assert!(logged("ready: tracing sendmmsg"), "{ctx}: {log:#?}");
                // arm64's BTF has every field the identity capture reads, and its exec hook
                // attaches: the spans name the workload from the kernel's capture.
                assert!(logged("process identities are captured in the kernel"), "{ctx}: {log:#?}");
                let summary = log.iter().find(|l| l.contains("stopped: ")).expect("the closing summary");
                assert!(summary.contains(" kretprobe_missed=0 "), "{ctx}: {summary}");
                let calls: Vec<CallReport> = run
                    .iter()
                    .filter_map(|l| l.strip_prefix("CALL "))
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{ctx}: bad call {l:?}: {e}")))
                    .collect();
                let spans: Vec<&str> = run.iter().filter_map(|l| l.strip_prefix("SPAN ")).collect();
                check_spans(&calls, &spans, &ctx);
            }
        }
    }
    assert_eq!(run.exit_code, Some(0), "{ctx}: the guest's script failed, or the guest timed out");
}

/// The workload's three calls are exactly three console lines of its pid, in order, each with
/// the arguments and results its caller saw (the kprobe family reads the arguments from arm64's
/// registers: a wrong register layout shows here).
fn check_spans(calls: &[CallReport], spans: &[&str], ctx: &str) {
    let scenarios: Vec<&str> = calls.iter().map(|c| c.scenario.as_str()).collect();
    assert_eq!(scenarios, SCENARIOS, "{ctx}: the workload's calls");
    let pid = format!("process.pid={}", calls[0].pid);
    let lines: Vec<&str> = spans.iter().copied().filter(|l| l.split(' ').any(|w| w == pid)).collect();
    assert_eq!(lines.len(), calls.len(), "{ctx}: one line per call: {spans:#?}");
    for (line, call) in lines.iter().zip(calls) {
        let has = |attribute: String| {
            line.contains(&format!(" {attribute} ")) || line.ends_with(&format!(" {attribute}"))
        };
        for attribute in [
            format!("sendmmsg.sockfd={}", call.sockfd),
            format!("sendmmsg.vlen={}", call.vlen),
            format!("thread.id={}", call.tid),
        ] {
            assert!(has(attribute.clone()), "{ctx}: {} wants {attribute}: {line}", call.scenario);
        }
        let expected: &[String] = &match call.scenario.as_str() {
            "udp4" => {
                assert_eq!(call.ret, 8, "{ctx}: {call:?}");
                vec![" OK ".into(), "sendmmsg.sent=8".into(), "events=8".into()]
            }
            "refused-mid-batch" => {
                // The call returns the count sent; the refused message's error is the kernel's.
                assert_eq!(call.ret, 2, "{ctx}: {call:?}");
                vec![" ERROR ".into(), "sendmmsg.sent=2".into(), "error.type=EMSGSIZE".into()]
            }
            _ => {
                assert_eq!((call.ret, call.errno), (-1, libc::EBADF), "{ctx}: {call:?}");
                vec![" ERROR ".into(), "error.type=EBADF".into()]
            }
        };
        for want in expected {
            let found = if want.starts_with(' ') { line.contains(want.as_str()) } else { has(want.clone()) };
            assert!(found, "{ctx}: {} wants {want:?}: {line}", call.scenario);
        }
    }
}
