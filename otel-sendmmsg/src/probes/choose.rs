//! Picks the hooks for the running kernel: the cheapest entry/exit family that attaches and
//! passes the self-test, then the cheapest per-message hook that sees every message of the
//! self-test's calls. Says which were chosen and why each other one was not.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    hooks::{Family, MessageHook},
    kernel::Kernel,
    selftest, Probes,
};
use crate::{
    config::Attach,
    records::{decode, Call},
};

/// How long the self-test's records may take to come back (ms normally; generous for slow VMs).
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The hooks in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub family: Family,
    /// None: no per-message hook works here; spans carry each call's result only.
    pub message: Option<MessageHook>,
}

/// `OTEL_SENDMMSG_ATTACH` named a family this kernel cannot give: a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("OTEL_SENDMMSG_ATTACH={family}: this kernel cannot give it: {reason}; use auto (the default) to pick what works")]
pub struct FamilyUnavailable {
    pub family: &'static str,
    pub reason: String,
}

/// Attaches the chosen hooks. Records that arrive meanwhile from other processes go to
/// `pass_on`, undecoded, so nothing is lost while the self-test runs.
pub async fn choose(
    probes: &mut Probes,
    kernel: &Kernel,
    attach: Attach,
    want_message_hook: bool,
    records: &mut AsyncFd<RingBuf<MapData>>,
    pass_on: &mut dyn FnMut(&[u8]),
) -> anyhow::Result<Choice> {
    let families = match attach {
        Attach::Auto => Family::BY_COST.to_vec(),
        Attach::Only(family) => vec![family],
    };
    let mut family = None;
    for (i, &candidate) in families.iter().enumerate() {
        let outcome = match probes.attach_entry_exit(candidate, kernel) {
            Err(reason) => Err(reason),
            Ok(()) => {
                self_test(probes, records, pass_on, false).await.inspect_err(|_| probes.detach_entry_exit())
            }
        };
        match outcome {
            Ok(()) => {
                family = Some(candidate);
                not_tried("entry/exit", families[i + 1..].iter().map(|f| f.name().to_owned()));
                break;
            }
            Err(reason) if attach == Attach::Only(candidate) => {
                return Err(FamilyUnavailable { family: candidate.name(), reason }.into());
            }
            Err(reason) => info!("not using {} for entry/exit: {reason}", candidate.name()),
        }
    }
    let family =
        family.ok_or_else(|| anyhow::anyhow!("no attach family works on this kernel (see above)"))?;
    info!("entry/exit hooks: {} (self-test passed)", probes.attached().join(", "));

    let mut message = None;
    if !want_message_hook {
        info!("no per-message hook: message sizes are read from msgvec at exit (OTEL_SENDMMSG_MESSAGE_DETAIL=sizes)");
        return Ok(Choice { family, message });
    }
    let candidates = MessageHook::candidates(family);
    for (i, &hook) in candidates.iter().enumerate() {
        let outcome = match probes.attach_message(hook, kernel) {
            Err(reason) => Err(reason),
            Ok(()) => {
                self_test(probes, records, pass_on, true).await.inspect_err(|_| probes.detach_message())
            }
        };
        match outcome {
            Ok(()) => {
                let kretprobes = probes.message_kretprobes();
                if kretprobes.is_empty() {
                    info!("per-message hook: {hook} (self-test saw every message)");
                } else {
                    info!(
                        "per-message hook: {hook} (self-test saw every message): {}",
                        kretprobes.join(", ")
                    );
                }
                message = Some(hook);
                not_tried("messages", candidates[i + 1..].iter().map(ToString::to_string));
                break;
            }
            Err(reason) => info!("not using {hook} for messages: {reason}"),
        }
    }
    if message.is_none() {
        warn!("no per-message hook works on this kernel: spans carry each call's result but no per-message detail");
    }
    Ok(Choice { family, message })
}

/// Every hook not chosen is accounted for in the log, including those a cheaper one made
/// unnecessary.
fn not_tried(role: &str, rest: impl Iterator<Item = String>) {
    let rest: Vec<String> = rest.collect();
    if !rest.is_empty() {
        info!("not trying {} for {role}: a cheaper hook works", rest.join(", "));
    }
}

/// Runs the self-test calls and checks their records: Err says what was wrong.
async fn self_test(
    probes: &mut Probes,
    records: &mut AsyncFd<RingBuf<MapData>>,
    pass_on: &mut dyn FnMut(&[u8]),
    per_message: bool,
) -> Result<(), String> {
    let (tid, made) = selftest::make_calls(|tid| probes.set_self_test_thread(tid))
        .map_err(|e| format!("the self-test could not run: {e:#}"))?;
    let seen = collect(records, tid, made.len(), pass_on).await;
    if let Err(e) = probes.set_self_test_thread(0) {
        warn!("{e:#}");
    }
    selftest::verify(&made, &seen, per_message).map_err(|e| format!("attached, but {e}"))
}

/// The records of thread `tid`, until `want` arrived or the time is up.
async fn collect(
    records: &mut AsyncFd<RingBuf<MapData>>,
    tid: u32,
    want: usize,
    pass_on: &mut dyn FnMut(&[u8]),
) -> Vec<Call> {
    let deadline = Instant::now() + SELF_TEST_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let ring = records.get_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(call) if call.tid == tid => seen.push(call),
                _ => pass_on(&item),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if seen.len() >= want || left.is_zero() {
            return seen;
        }
        if let Ok(Ok(mut guard)) = tokio::time::timeout(left, records.readable_mut()).await {
            guard.clear_ready();
        }
    }
}
