//! Threads that read traced processes' `/proc` files, so the event loop never waits on another
//! process. A read can take as long as the process makes it (a thread of it stuck reading its
//! own mapping of a FUSE file it serves, while another queues for its memory lock, makes every
//! reader of its memory, `/proc/PID/environ` included, wait in the kernel beyond any signal), so:
//! - the event loop only hands over requests and takes answers that are ready;
//! - a thread busy on one process for longer than [`STALLED_AFTER`] is written off: another
//!   takes its place (up to [`MAX_THREADS`] in all), and further requests for processes of the
//!   same user are answered at once from the calling thread's name, so one user's stalling
//!   processes cost only that user's metadata, never the threads everyone else needs;
//! - the pipeline gives each request a deadline of its own (see `run.rs`).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tracing::warn;

use super::{process_context::Stamp, read_identities, read_process, Checked, ReadOutcome, ReadRequest};

/// Threads that read at once while none is stalled: one read waits on the disk now and then.
const THREADS: usize = 2;
/// Threads at most, stalled ones included.
pub const MAX_THREADS: usize = 16;
/// A read that has not returned by then is taken to be stalled by the process it reads.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

pub enum Job {
    Read(ReadRequest),
    /// The identities of these pids now, and whether these process contexts are still the ones
    /// published.
    Sweep(Vec<(u32, Option<Stamp>)>),
}

pub enum Answer {
    /// `None`: not read, because a read of another process of the same user is stalled.
    Read(ReadRequest, Option<ReadOutcome>),
    Sweep(Vec<Checked>),
}

/// What each thread is doing, shared with the event loop's checks.
#[derive(Default)]
struct Board {
    /// Thread number -> since when and for which user it reads (absent when idle).
    busy: HashMap<usize, (Instant, Option<u32>)>,
    /// Threads written off, and the users whose reads stalled them.
    stalled: HashMap<usize, Option<u32>>,
}

pub struct Resolver {
    jobs: Sender<Job>,
    answers: Receiver<Answer>,
    queue: Arc<Mutex<Receiver<Job>>>,
    answer_to: Sender<Answer>,
    board: Arc<Mutex<Board>>,
    root: PathBuf,
    threads: usize,
    /// Reads given up on as stalled, for the summary.
    pub stalled_reads: u64,
}

impl Resolver {
    /// Starts the threads, reading under `root` (`/proc`, or a test's directory).
    pub fn start(root: impl Into<PathBuf>) -> std::io::Result<Resolver> {
        let (jobs, queue) = mpsc::channel();
        let (answer_to, answers) = mpsc::channel();
        let mut resolver = Resolver {
            jobs,
            answers,
            queue: Arc::new(Mutex::new(queue)),
            answer_to,
            board: Arc::default(),
            root: root.into(),
            threads: 0,
            stalled_reads: 0,
        };
        for _ in 0..THREADS {
            resolver.spawn()?;
        }
        Ok(resolver)
    }

    /// Hands a job over; never waits.
    pub fn submit(&self, job: Job) {
        // The threads end only with the resolver.
        let _ = self.jobs.send(job);
    }

    /// The answers ready now.
    pub fn answers(&self) -> impl Iterator<Item = Answer> + '_ {
        self.answers.try_iter()
    }

    /// Writes off threads whose read has taken longer than [`STALLED_AFTER`] and starts others
    /// in their place, up to [`MAX_THREADS`]. Called from the event loop's timer.
    pub fn check_stalls(&mut self) {
        let newly: Vec<(usize, Option<u32>)> = {
            let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let stalled: Vec<(usize, Option<u32>)> = board
                .busy
                .iter()
                .filter(|(thread, (since, _))| {
                    now.duration_since(*since) > STALLED_AFTER && !board.stalled.contains_key(thread)
                })
                .map(|(thread, (_, uid))| (*thread, *uid))
                .collect();
            board.stalled.extend(stalled.iter().copied());
            stalled
        };
        for (_, uid) in &newly {
            self.stalled_reads += 1;
            let who = uid.map_or("an unknown user".to_owned(), |uid| format!("user {uid}"));
            if self.stalled_reads.is_power_of_two() {
                warn!(
                    "reading a process of {who} in /proc has not returned for {STALLED_AFTER:?}: its processes \
                     are named after their threads until it does ({} such reads so far)",
                    self.stalled_reads
                );
            }
            if self.threads < MAX_THREADS {
                if let Err(e) = self.spawn() {
                    warn!("starting another /proc reader thread: {e}");
                }
            }
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let number = self.threads;
        let (queue, answers, board, root) =
            (self.queue.clone(), self.answer_to.clone(), self.board.clone(), self.root.clone());
        std::thread::Builder::new()
            .name("proc-reader".into())
            .spawn(move || serve(number, &queue, &answers, &board, &root))?;
        self.threads += 1;
        Ok(())
    }
}

/// One thread: takes jobs until the resolver is dropped.
fn serve(
    number: usize,
    queue: &Mutex<Receiver<Job>>,
    answers: &Sender<Answer>,
    board: &Mutex<Board>,
    root: &Path,
) {
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let answer = match job {
            Job::Read(request) => {
                // The owner of /proc/PID, from the directory's own metadata: that reads nothing
                // of the process's memory, so it cannot stall.
                let uid = std::fs::metadata(root.join(request.pid.to_string())).ok().map(|m| m.uid());
                let refused = {
                    let mut board = board.lock().unwrap_or_else(|p| p.into_inner());
                    let refused = uid.is_some() && board.stalled.values().any(|stalled| *stalled == uid);
                    if !refused {
                        board.busy.insert(number, (Instant::now(), uid));
                    }
                    refused
                };
                let outcome = (!refused).then(|| read_process(root, &request));
                Answer::Read(request, outcome)
            }
            Job::Sweep(pids) => {
                board.lock().unwrap_or_else(|p| p.into_inner()).busy.insert(number, (Instant::now(), None));
                Answer::Sweep(read_identities(root, pids))
            }
        };
        {
            let mut board = board.lock().unwrap_or_else(|p| p.into_inner());
            board.busy.remove(&number);
            // Back from a stall: its user's processes are read again.
            board.stalled.remove(&number);
        }
        if answers.send(answer).is_err() {
            return;
        }
    }
}
