//! The one way a program goes into the kernel and onto a hook, whatever the kind, and the one
//! way a set of hooks is attached: all of them, or none.

use std::{any::Any, collections::HashSet, os::fd::AsFd, path::Path};

use anyhow::anyhow;
use aya::{
    programs::{FEntry, FExit, KProbe, Program, TracePoint},
    Btf, Ebpf,
};
use tracing::{debug, warn};

use super::{
    kernel::{self, TRACEFS},
    kretprobe_events::KretprobeEvent,
};

/// Where one program goes, as the running kernel names it ([`super::hooks::Hook::point`]).
pub enum Point<'a> {
    Tracepoint {
        category: &'a str,
        event: &'a str,
    },
    Kprobe {
        function: &'a str,
    },
    /// Through a tracefs event of our own that follows `maxactive` calls at once
    /// ([`super::kretprobe_events`]); where tracefs refuses it, through aya's kprobe PMU with
    /// the kernel's default (max(10, 2 x CPUs)).
    Kretprobe {
        function: &'a str,
        maxactive: u32,
    },
    Fentry {
        function: &'a str,
        btf: &'a Btf,
    },
    Fexit {
        function: &'a str,
        btf: &'a Btf,
    },
}

/// An attached hook; dropping it detaches it.
pub struct Attached {
    /// As the log names it.
    pub what: String,
    link: Link,
}

enum Link {
    /// One of aya's links, whichever program type; only held, since dropping it detaches.
    Aya {
        _link: Box<dyn Any>,
    },
    Kretprobe(KretprobeEvent),
}

impl Attached {
    /// The returns a tracefs kretprobe missed so far; 0 for any other hook (the kernel does not
    /// tell the misses of a kprobe PMU kretprobe).
    pub fn kretprobe_missed(&self) -> u64 {
        let Link::Kretprobe(event) = &self.link else {
            return 0;
        };
        event.missed().unwrap_or_else(|e| {
            debug!("reading the misses of {}: {e}", self.what);
            0
        })
    }
}

/// The loaded BPF object's programs: each goes into the kernel once, at its first attach, so
/// only the programs of the hooks tried are ever verified.
#[derive(Default)]
pub struct Programs {
    loaded: HashSet<&'static str>,
}

impl Programs {
    /// The programs loaded into the kernel so far.
    pub fn loaded(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.loaded.iter().copied()
    }

    /// Loads `program` into the kernel if it is not yet, and attaches it at `point`.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &'static str,
        point: &Point,
    ) -> Result<Attached, String> {
        let first = self.loaded.insert(program);
        let prog = ebpf.program_mut(program).ok_or_else(|| format!("BPF program {program} missing"))?;
        match *point {
            Point::Tracepoint { category, event } => {
                let prog: &mut TracePoint = typed(prog, program)?;
                if first {
                    prog.load().map_err(|e| load_error(program, e))?;
                }
                let id = prog.attach(category, event).map_err(|e| attach_error("attach", e))?;
                aya_link(prog.take_link(id), format!("tracepoint {category}:{event}"))
            }
            Point::Kprobe { function } => {
                let prog: &mut KProbe = typed(prog, program)?;
                if first {
                    prog.load().map_err(|e| load_error(program, e))?;
                }
                kprobe_pmu(prog, function, format!("kprobe {function}"))
            }
            Point::Kretprobe { function, maxactive } => {
                let prog: &mut KProbe = typed(prog, program)?;
                if first {
                    prog.load().map_err(|e| load_error(program, e))?;
                }
                let fd = prog.fd().map_err(|e| e.to_string())?.as_fd();
                match KretprobeEvent::attach(Path::new(TRACEFS), fd, function, maxactive) {
                    Ok(event) => {
                        debug!("kretprobe {function}: tracefs event with maxactive {maxactive}");
                        let what = format!("kretprobe {function} (maxactive {maxactive})");
                        Ok(Attached { what, link: Link::Kretprobe(event) })
                    }
                    Err(e) => {
                        warn!(
                            "kretprobe {function}: tracefs refused an event with maxactive {maxactive} ({e}); \
                             attaching through the kprobe PMU, where the kernel allows max(10, 2 x CPUs) \
                             calls inside at once and misses the returns of any more (exit_missed)"
                        );
                        kprobe_pmu(
                            prog,
                            function,
                            format!("kretprobe {function} (kprobe PMU, default maxactive)"),
                        )
                    }
                }
            }
            Point::Fentry { function, btf } => {
                let prog: &mut FEntry = typed(prog, program)?;
                if first {
                    prog.load(function, btf).map_err(|e| load_error(program, e))?;
                }
                let id = prog.attach().map_err(|e| attach_error("attach", e))?;
                aya_link(prog.take_link(id), format!("fentry {function}"))
            }
            Point::Fexit { function, btf } => {
                let prog: &mut FExit = typed(prog, program)?;
                if first {
                    prog.load(function, btf).map_err(|e| load_error(program, e))?;
                }
                let id = prog.attach().map_err(|e| attach_error("attach", e))?;
                aya_link(prog.take_link(id), format!("fexit {function}"))
            }
        }
    }
}

/// Hooks attached as one, all or none, and detached together: last attached first.
#[derive(Default)]
pub struct Set {
    attached: Vec<Attached>,
    /// Returns missed by tracefs kretprobes of this set already detached.
    kretprobe_missed_detached: u64,
}

impl Set {
    /// Attaches every program at its point, in order. On the first error, detaches what did
    /// attach (so nothing is left half in place) and says why.
    pub fn attach_all<'a>(
        &mut self,
        programs: &mut Programs,
        ebpf: &mut Ebpf,
        points: impl IntoIterator<Item = (&'static str, Point<'a>)>,
    ) -> Result<(), String> {
        for (program, point) in points {
            match programs.attach(ebpf, program, &point) {
                Ok(attached) => self.attached.push(attached),
                Err(e) => {
                    self.detach();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Detaches every hook of the set, the last attached first.
    pub fn detach(&mut self) {
        while let Some(a) = self.attached.pop() {
            debug!("detaching {}", a.what);
            self.kretprobe_missed_detached += a.kretprobe_missed();
        }
    }

    /// The hooks attached now, as the log names them.
    pub fn describe(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|a| a.what.as_str())
    }

    /// The returns its tracefs kretprobes missed, attached now or before.
    pub fn kretprobe_missed(&self) -> u64 {
        self.kretprobe_missed_detached + self.attached.iter().map(Attached::kretprobe_missed).sum::<u64>()
    }
}

fn typed<'a, P>(prog: &'a mut Program, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut Program>,
{
    prog.try_into().map_err(|_| format!("BPF program {name} has another type"))
}

fn aya_link<L: Any>(link: Result<L, aya::programs::ProgramError>, what: String) -> Result<Attached, String> {
    let link = link.map_err(|e| e.to_string())?;
    Ok(Attached { what, link: Link::Aya { _link: Box::new(link) } })
}

/// A kprobe, or a kretprobe (the program says which), through aya's kprobe PMU.
fn kprobe_pmu(prog: &mut KProbe, function: &str, what: String) -> Result<Attached, String> {
    let id = prog.attach(function, 0).map_err(|e| attach_error(&format!("attach to {function}"), e))?;
    aya_link(prog.take_link(id), what)
}

/// "<what> refused: <the call> failed: <the kernel's error>": aya's error alone names the call
/// but not the errno, which is what tells the refusals apart (on arm64 before 6.4, fentry's
/// `bpf_raw_tracepoint_open` fails with ENOTSUPP, 524: no ftrace direct calls there).
/// An EACCES that `kernel.perf_event_paranoid` explains says so, with the ways out.
fn attach_error(what: &str, e: aya::programs::ProgramError) -> String {
    let e = anyhow!(e);
    let denied = e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EACCES)
    });
    match denied.then(|| kernel::perf_events_refused_because(kernel::perf_event_paranoid())).flatten() {
        Some(why) => format!("{what} refused: {e:#}; {why}"),
        None => format!("{what} refused: {e:#}"),
    }
}

/// "load of P refused: <the kernel's reason>", with the verifier log's first line at most.
fn load_error(program: &str, e: aya::programs::ProgramError) -> String {
    let text = format!("{:#}", anyhow!(e));
    let first = text.lines().next().unwrap_or_default();
    format!("load of {program} refused: {first}")
}
