//! Part 3, first call: what a process's first traced call pays for the identity capture (the
//! kernel reads its environment block, executable and cgroup names into the ring buffer), and
//! that its later calls pay only the once-per-process check.
//!
//! Many short-lived processes, one after another, each making two `udp4` calls (8 messages of
//! ~100 B over connected loopback UDP) and exiting; the workload times each `sendmmsg` with
//! `CLOCK_MONOTONIC` around it (`call_ns`). Configurations, interleaved in rounds: untraced; the
//! sidecar (tracepoint, detail events) with the capture on; the same with the capture off (the
//! bench clears the sidecar's `IDENTITY_ON` map after start-up: the kernel then only checks that
//! flag, as before the capture existed). The first call with the capture off is what the first
//! call cost before; the difference to "on" is the capture.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use aya::maps::{loaded_maps, Array, Map, MapData};

use super::{median, sidecar_vars, support, Settings};

/// `BENCH_FIRST_CALL_PROCESSES` (100): processes per configuration and round.
pub fn processes() -> usize {
    super::env_num("BENCH_FIRST_CALL_PROCESSES", "100")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    Untraced,
    On,
    Off,
}

impl Capture {
    fn label(self) -> &'static str {
        match self {
            Capture::Untraced => "untraced",
            Capture::On => "sidecar tracepoint, capture on",
            Capture::Off => "sidecar tracepoint, capture off",
        }
    }
}

/// Turns the running sidecar's identity capture off: its `IDENTITY_ON` map is the newest of
/// that name (the sidecar was started just before).
pub fn capture_off() -> Result<(), String> {
    let newest = loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("IDENTITY_ON"))
        .map(|m| m.id())
        .max()
        .ok_or("no IDENTITY_ON map loaded")?;
    let data = MapData::from_id(newest).map_err(|e| e.to_string())?;
    let map = Map::from_map_data(data).map_err(|e| e.to_string())?;
    let mut on = Array::<_, u32>::try_from(map).map_err(|e| e.to_string())?;
    on.set(0, 0, 0).map_err(|e| e.to_string())
}

/// Each process's (first, second) call_ns.
fn run_processes(workload: &Path, n: usize) -> Vec<(u64, u64)> {
    (0..n)
        .filter_map(|i| {
            let out = Command::new(workload)
                .args(["udp4", "udp4"])
                .env("OTEL_SERVICE_NAME", format!("first-call-{i}"))
                .env("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=bench,deployment.environment.name=bench")
                .stderr(Stdio::inherit())
                .output()
                .expect("running the workload");
            let ns: Vec<u64> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("call_ns")?.as_u64())
                .collect();
            (ns.len() == 2).then(|| (ns[0], ns[1]))
        })
        .collect()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

pub fn first_call(settings: &Settings) -> String {
    let workload = Path::new(support::WORKLOAD);
    let n = processes();
    let configs = [Capture::Untraced, Capture::On, Capture::Off];
    let mut samples: Vec<Vec<(u64, u64)>> = vec![Vec::new(); configs.len()];
    let mut captured = vec![0u64; configs.len()];
    // Warm-up: the binary in the page cache, not counted.
    run_processes(workload, 10);
    for round in 0..settings.rounds {
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            let config = configs[i];
            let sidecar = match config {
                Capture::Untraced => None,
                Capture::On | Capture::Off => {
                    let (metrics_only, hash_map) = (false, false);
                    let vars = sidecar_vars("tracepoint", "events", metrics_only, hash_map, settings);
                    match support::Sidecar::try_start(&vars) {
                        Ok(s) => Some(s),
                        Err((status, log)) => {
                            return format!(
                                "\nfirst call: the sidecar did not start ({status}): {}\n",
                                super::reason(&log)
                            );
                        }
                    }
                }
            };
            if config == Capture::Off {
                if let Err(e) = capture_off() {
                    return format!("\nfirst call: could not turn the capture off: {e}\n");
                }
            }
            let runs = run_processes(workload, n);
            eprintln!(
                "first call round {}/{}: {:<32} {} processes",
                round + 1,
                settings.rounds,
                config.label(),
                runs.len()
            );
            samples[i].extend(runs);
            if let Some(sidecar) = sidecar {
                let stopped = sidecar.stop();
                captured[i] += support::summary_count(&stopped.stderr, "identities_captured");
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## First call: {n} short-lived processes x {} rounds per configuration, two udp4 calls each (8 messages); sendmmsg time as the caller sees it\n",
        settings.rounds
    );
    let _ = writeln!(
        out,
        "| configuration | processes | 1st call median | 1st call p90 | 2nd call median | 2nd call p90 | identities captured |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let mut first: Vec<f64> = samples[i].iter().map(|s| s.0 as f64 / 1000.0).collect();
        let mut second: Vec<f64> = samples[i].iter().map(|s| s.1 as f64 / 1000.0).collect();
        if first.is_empty() {
            continue;
        }
        let (m1, m2) = (median(&mut first), median(&mut second));
        medians.push((m1, m2));
        let _ = writeln!(
            out,
            "| {} | {} | {m1:.1} µs | {:.1} µs | {m2:.1} µs | {:.1} µs | {} |",
            config.label(),
            first.len(),
            percentile(&mut first, 0.9),
            percentile(&mut second, 0.9),
            if *config == Capture::Untraced { "–".to_owned() } else { captured[i].to_string() },
        );
    }
    if let [(u1, u2), (on1, on2), (off1, off2)] = medians[..] {
        let _ = writeln!(
            out,
            "\nMedians: the capture adds {:.1} µs to a process's first call (on {on1:.1} − off {off1:.1}); \
             tracing adds {:.1} µs to the first call and {:.1} µs to the second with the capture on, \
             {:.1} µs and {:.1} µs with it off (untraced: {u1:.1} µs and {u2:.1} µs).",
            on1 - off1,
            on1 - u1,
            on2 - u2,
            off1 - u1,
            off2 - u2,
        );
    }
    let _ = writeln!(
        out,
        "\"capture off\": the sidecar's IDENTITY_ON map cleared after start-up, so the entry hook \
         stops at that flag (the first-call cost before the capture existed, within one array \
         lookup). The environment of each process is the bench's own plus two OTEL_* variables."
    );
    out
}
