//! What the BPF programs themselves cost, from the kernel's own statistics: with run-time
//! statistics enabled (`BPF_ENABLE_STATS`, held for as long as the returned fd lives), the
//! kernel adds each program run's nanoseconds to that program's `run_time_ns` and counts it in
//! `run_cnt`. A snapshot before and after a workload run gives, per program, the runs it made and
//! the time they took; the hooks' own dispatch (the tracepoint or trampoline around the program)
//! is not in it, which is what the floor's programs measure.

use std::{collections::BTreeMap, os::fd::OwnedFd};

use aya::{
    programs::loaded_programs,
    sys::{enable_stats, Stats},
};

/// Keeps the kernel's run-time statistics on; they go off when it is dropped.
pub struct Enabled(#[allow(dead_code)] OwnedFd);

/// Turns the kernel's run-time statistics on, or says why it cannot.
pub fn enable() -> Result<Enabled, String> {
    enable_stats(Stats::RunTime).map(Enabled).map_err(|e| format!("BPF_ENABLE_STATS: {e}"))
}

/// Every loaded program's totals at one moment, by program id.
#[derive(Clone, Default)]
pub struct Snapshot(BTreeMap<u32, (String, u64, u64)>);

/// One program's runs and their time between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

impl ProgramCost {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ns as f64 / self.runs as f64
        }
    }
}

pub fn snapshot() -> Snapshot {
    Snapshot(
        loaded_programs()
            .filter_map(Result::ok)
            .map(|p| {
                let name = p.name_as_str().unwrap_or("?").to_owned();
                (p.id(), (name, p.run_time().as_nanos() as u64, p.run_count()))
            })
            .collect(),
    )
}

/// Adds `more` into `costs`, program by program (by name).
pub fn add(costs: &mut Vec<ProgramCost>, more: Vec<ProgramCost>) {
    for cost in more {
        match costs.iter_mut().find(|c| c.name == cost.name) {
            Some(c) => {
                c.runs += cost.runs;
                c.ns += cost.ns;
            }
            None => costs.push(cost),
        }
    }
}

impl Snapshot {
    /// What ran between `self` and `later`, per program that ran at all, by name: programs
    /// loaded in between count from zero, and programs of one name (one per hook) add up.
    pub fn until(&self, later: &Snapshot) -> Vec<ProgramCost> {
        let mut by_name: BTreeMap<String, ProgramCost> = BTreeMap::new();
        for (id, (name, ns, runs)) in &later.0 {
            let (ns0, runs0) = self.0.get(id).map_or((0, 0), |(_, ns, runs)| (*ns, *runs));
            let (ns, runs) = (ns.saturating_sub(ns0), runs.saturating_sub(runs0));
            if runs == 0 {
                continue;
            }
            let cost =
                by_name.entry(name.clone()).or_insert(ProgramCost { name: name.clone(), runs: 0, ns: 0 });
            cost.runs += runs;
            cost.ns += ns;
        }
        by_name.into_values().collect()
    }
}
