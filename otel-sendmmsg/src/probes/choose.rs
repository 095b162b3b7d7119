//! Picks the hooks for the running kernel: the cheapest entry/exit family that attaches and
//! passes the self-test, then the cheapest per-message hook that sees every message of the
//! self-test's calls. Says which were chosen and why each other one was not.
//!
//! The choice is a sequence of trials that the start-up loop drives: [`Choosing::next`]
//! attaches a candidate and makes the self-test's calls; the loop reads the ring buffer as it
//! always does, its pipeline handing the self-test's records to the [`Trial`], until they are all
//! there or [`SELF_TEST_TIMEOUT`] passed; [`Choosing::verdict`] keeps or detaches the candidate.
//! So records go one way, through one reader, whoever made the calls.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    hooks::{Family, MessageHook},
    kernel::Kernel,
    selftest::{self, Trial},
    Probes,
};
use crate::config::Attach;

/// How long the self-test's records may take to come back. Milliseconds normally, but an
/// emulated guest on a busy host (qemu without KVM, as the arm64 and kernel-matrix tests run)
/// once took more than 5 s and a working family was passed over. Only a family that attaches
/// and then stays silent pays the wait, before the next one is tried.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(20);

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

/// What the start-up loop does next.
pub enum Next {
    /// Let the trial collect its records, then hand it to [`Choosing::verdict`].
    Trial(Trial),
    /// Every hook is chosen and attached.
    Chosen(Choice),
}

/// A candidate attached and under test.
#[derive(Clone, Copy)]
enum Candidate {
    EntryExit(Family),
    Message(MessageHook),
}

/// The choice so far: what is left to try, and what passed.
pub struct Choosing {
    attach: Attach,
    want_message_hook: bool,
    /// Entry/exit families not tried yet, cheapest first.
    families: VecDeque<Family>,
    family: Option<Family>,
    /// Per-message hooks not tried yet, in the order [`MessageHook::candidates`] gives.
    messages: VecDeque<MessageHook>,
    message: Option<MessageHook>,
    trying: Option<Candidate>,
}

impl Choosing {
    pub fn new(attach: Attach, want_message_hook: bool) -> Choosing {
        let families = match attach {
            Attach::Auto => Family::BY_COST.into(),
            Attach::Only(family) => [family].into(),
        };
        Choosing {
            attach,
            want_message_hook,
            families,
            family: None,
            messages: VecDeque::new(),
            message: None,
            trying: None,
        }
    }

    /// Attaches the next candidate and makes the self-test's calls, passing over (with the
    /// reason in the log) every candidate that cannot even attach.
    pub fn next(&mut self, probes: &mut Probes, kernel: &Kernel) -> anyhow::Result<Next> {
        assert!(self.trying.is_none(), "a trial is still waiting for its verdict");
        while self.family.is_none() {
            let family = self
                .families
                .pop_front()
                .ok_or_else(|| anyhow::anyhow!("no attach family works on this kernel (see above)"))?;
            let started = probes
                .attach_entry_exit(family, kernel)
                .and_then(|()| start_trial(probes, false).inspect_err(|_| probes.detach_entry_exit()));
            match started {
                Ok(trial) => {
                    self.trying = Some(Candidate::EntryExit(family));
                    return Ok(Next::Trial(trial));
                }
                Err(reason) => self.entry_exit_failed(family, reason)?,
            }
        }
        let family = self.family.expect("chosen above");
        while self.message.is_none() && self.want_message_hook {
            let Some(hook) = self.messages.pop_front() else {
                warn!("no per-message hook works on this kernel: spans carry each call's result but no per-message detail");
                break;
            };
            let started = probes
                .attach_message(hook, kernel)
                .and_then(|()| start_trial(probes, true).inspect_err(|_| probes.detach_message()));
            match started {
                Ok(trial) => {
                    self.trying = Some(Candidate::Message(hook));
                    return Ok(Next::Trial(trial));
                }
                Err(reason) => info!("not using {hook} for messages: {reason}"),
            }
        }
        Ok(Next::Chosen(Choice { family, message: self.message }))
    }

    /// Keeps the candidate under test if its records prove it, detaches it otherwise.
    pub fn verdict(&mut self, probes: &mut Probes, trial: Trial) -> anyhow::Result<()> {
        if let Err(e) = probes.set_self_test_thread(0) {
            warn!("{e:#}");
        }
        let outcome = trial.verdict().map_err(|e| format!("attached, but {e}"));
        match self.trying.take().expect("a trial was started") {
            Candidate::EntryExit(family) => match outcome {
                Ok(()) => self.entry_exit_chosen(family, probes),
                Err(reason) => {
                    probes.detach_entry_exit();
                    self.entry_exit_failed(family, reason)?;
                }
            },
            Candidate::Message(hook) => match outcome {
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
                    self.message = Some(hook);
                    not_tried("messages", self.messages.drain(..).map(|h| h.to_string()));
                }
                Err(reason) => {
                    probes.detach_message();
                    info!("not using {hook} for messages: {reason}");
                }
            },
        }
        Ok(())
    }

    fn entry_exit_chosen(&mut self, family: Family, probes: &Probes) {
        self.family = Some(family);
        not_tried("entry/exit", self.families.drain(..).map(|f| f.name().to_owned()));
        info!("entry/exit hooks: {} (self-test passed)", probes.attached().join(", "));
        if self.want_message_hook {
            self.messages = MessageHook::candidates(family).into();
        } else {
            info!("no per-message hook: message sizes are read from msgvec at exit (OTEL_SENDMMSG_MESSAGE_DETAIL=sizes)");
        }
    }

    /// A family that did not attach or failed its self-test: the end of the choice when it was
    /// the one asked for.
    fn entry_exit_failed(&self, family: Family, reason: String) -> anyhow::Result<()> {
        if self.attach == Attach::Only(family) {
            return Err(FamilyUnavailable { family: family.name(), reason }.into());
        }
        info!("not using {} for entry/exit: {reason}", family.name());
        Ok(())
    }
}

/// Every hook not chosen is accounted for in the log, including those a cheaper one made
/// unnecessary.
fn not_tried(role: &str, rest: impl Iterator<Item = String>) {
    let rest: Vec<String> = rest.collect();
    if !rest.is_empty() {
        info!("not trying {} for {role}: a cheaper hook works", rest.join(", "));
    }
}

/// Runs the self-test calls; their records are yet to come. Err says why it could not run.
fn start_trial(probes: &mut Probes, per_message: bool) -> Result<Trial, String> {
    let (tid, made) = selftest::make_calls(|tid| probes.set_self_test_thread(tid))
        .map_err(|e| format!("the self-test could not run: {e:#}"))?;
    Ok(Trial::new(tid, made, per_message, Instant::now() + SELF_TEST_TIMEOUT))
}
