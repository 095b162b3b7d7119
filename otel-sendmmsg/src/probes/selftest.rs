//! Proves hooks on the running kernel before they are trusted: a few `sendmmsg` calls over
//! loopback from one of the sidecar's own threads, whose records must come back complete.
//!
//! The calls cover the paths where per-message hooks are known to go blind: a connected socket,
//! and an unconnected one whose messages repeat a destination (which skipped `sock_sendmsg`
//! before Linux 6.6).
//!
//! The records come back through the sidecar's one record path: while a [`Trial`] runs, the
//! pipeline hands it the decoded calls of the self-test's thread instead of making spans.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

use crate::{
    records::Call,
    sendmmsg::{gettid, Batch},
};

/// A call the self-test made, as user space saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MadeCall {
    pub sockfd: i32,
    pub msgvec: u64,
    pub sizes: Vec<usize>,
    pub sent: usize,
}

/// One self-test under way: the calls made, and the records of their thread as they arrive.
pub struct Trial {
    tid: u32,
    made: Vec<MadeCall>,
    per_message: bool,
    deadline: Instant,
    seen: Vec<Call>,
}

impl Trial {
    /// A trial of the calls thread `tid` made; their records may take until `deadline`.
    pub fn new(tid: u32, made: Vec<MadeCall>, per_message: bool, deadline: Instant) -> Trial {
        Trial { tid, made, per_message, deadline, seen: Vec::new() }
    }

    /// Takes a call of the self-test's thread ([`Trial::tid`]).
    pub fn record(&mut self, call: Call) {
        self.seen.push(call);
    }

    /// How long to wait for more records: None once every call's record came or time is up.
    pub fn time_left(&self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (self.seen.len() < self.made.len() && !left.is_zero()).then_some(left)
    }

    /// The self-test's thread: its calls are the trial's, not spans.
    pub fn tid(&self) -> u32 {
        self.tid
    }

    /// Whether the records prove the hooks; Err says what was wrong.
    pub fn verdict(&self) -> Result<(), String> {
        verify(&self.made, &self.seen, self.per_message)
    }
}

/// Makes the self-test calls on a new thread. `register` runs first with the thread's id and
/// must let the BPF side trace that thread (it ignores the sidecar's own threads otherwise).
pub fn make_calls(register: impl FnOnce(u32) -> Result<()>) -> Result<(u32, Vec<MadeCall>)> {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = std::thread::Builder::new().name("self-test".into()).spawn(move || {
        let _ = tid_tx.send(gettid());
        go_rx.recv().map_err(|_| anyhow!("self-test cancelled"))?;
        calls()
    })?;
    let tid = tid_rx.recv().context("self-test thread")?;
    let registered = register(tid);
    // Dropping the sender without a message cancels the thread if registering failed.
    if registered.is_ok() {
        let _ = go_tx.send(());
    }
    drop(go_tx);
    let made = worker.join().map_err(|_| anyhow!("self-test thread panicked"))?;
    registered?;
    Ok((tid, made?))
}

fn calls() -> Result<Vec<MadeCall>> {
    let localhost = (Ipv4Addr::LOCALHOST, 0);
    let (a, b) = (UdpSocket::bind(localhost)?, UdpSocket::bind(localhost)?);
    let (a, b): (Option<SocketAddr>, Option<SocketAddr>) = (Some(a.local_addr()?), Some(b.local_addr()?));
    let unconnected = UdpSocket::bind(localhost)?;
    let connected = UdpSocket::bind(localhost)?;
    connected.connect(a.expect("bound"))?;
    let mut made = Vec::new();
    for (socket, sizes, dests) in
        [(&unconnected, vec![11, 12, 13], vec![a, a, b]), (&connected, vec![14, 15], vec![])]
    {
        let mut batch = Batch::new(&sizes, &dests);
        let sent = batch.send(socket.as_raw_fd(), libc::MSG_DONTWAIT).context("self-test sendmmsg")?;
        made.push(MadeCall { sockfd: socket.as_raw_fd(), msgvec: batch.msgvec() as u64, sizes, sent });
    }
    Ok(made)
}

/// Checks the records the hooks produced against the calls made: the call's arguments and
/// result always, each message's result too when a per-message hook is under test.
pub fn verify(made: &[MadeCall], seen: &[Call], per_message: bool) -> Result<(), String> {
    if seen.len() != made.len() {
        return Err(format!("saw {} of the self-test's {} calls", seen.len(), made.len()));
    }
    for (i, (m, s)) in made.iter().zip(seen).enumerate() {
        let args = (s.sockfd, s.msgvec, s.vlen as usize, s.ret);
        if args != (m.sockfd, m.msgvec, m.sizes.len(), m.sent as i64) {
            return Err(format!(
                "call {i} read as (fd {}, msgvec {:#x}, vlen {}, ret {}), made as (fd {}, msgvec {:#x}, vlen {}, ret {})",
                s.sockfd,
                s.msgvec,
                s.vlen,
                s.ret,
                m.sockfd,
                m.msgvec,
                m.sizes.len(),
                m.sent
            ));
        }
        if per_message {
            let results: Vec<i64> = s.detail.iter().map(|d| d.ret.into()).collect();
            let expected: Vec<i64> = m.sizes.iter().map(|&n| n as i64).collect();
            if results != expected {
                return Err(format!(
                    "saw {} of call {i}'s {} messages (results {results:?}, sent {expected:?})",
                    s.messages.seen,
                    m.sizes.len()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use otel_sendmmsg_common::MessageResult;

    use super::*;
    use crate::records::MessageTotals;

    fn made() -> Vec<MadeCall> {
        vec![
            MadeCall { sockfd: 5, msgvec: 0x1000, sizes: vec![11, 12, 13], sent: 3 },
            MadeCall { sockfd: 6, msgvec: 0x2000, sizes: vec![14, 15], sent: 2 },
        ]
    }

    fn seen(m: &MadeCall, results: &[i32]) -> Call {
        Call {
            pid: 1,
            process_start_ns: 0,
            tid: 2,
            comm: "self-test".into(),
            start_ns: 0,
            end_ns: 1,
            sockfd: m.sockfd,
            msgvec: m.msgvec,
            vlen: m.sizes.len() as u32,
            flags: 0,
            ret: m.sent as i64,
            messages: MessageTotals { seen: results.len() as u32, ..Default::default() },
            detail: results.iter().map(|&ret| MessageResult { ret, ..Default::default() }).collect(),
            destinations: vec![],
            socket: None,
            parent: None,
            sizes_only: false,
        }
    }

    #[test]
    fn complete_records_pass() {
        let m = made();
        assert_eq!(verify(&m, &[seen(&m[0], &[11, 12, 13]), seen(&m[1], &[14, 15])], true), Ok(()));
        assert_eq!(verify(&m, &[seen(&m[0], &[]), seen(&m[1], &[])], false), Ok(()));
    }

    #[test]
    fn a_hook_blind_to_repeated_destinations_fails() {
        let m = made();
        let err = verify(&m, &[seen(&m[0], &[11, 13]), seen(&m[1], &[14, 15])], true).unwrap_err();
        assert!(err.contains("saw 2 of call 0's 3 messages"), "{err}");
    }

    #[test]
    fn missing_calls_or_misread_arguments_fail() {
        let m = made();
        assert!(verify(&m, &[seen(&m[0], &[])], false).unwrap_err().contains("saw 1 of the self-test's 2"));
        let mut wrong = seen(&m[1], &[]);
        wrong.sockfd = 99;
        assert!(verify(&m, &[seen(&m[0], &[]), wrong], false).unwrap_err().contains("call 1 read as (fd 99"));
    }
}
