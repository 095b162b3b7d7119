//! Loading the BPF object: what the kernel must offer first, which of the two objects (where
//! each thread's call waits between entry and exit: task-local storage, or a hash map), the
//! globals and map sizes the settings give, the filter maps, and the shared trace-context map.
//! No program goes into the kernel here: each is loaded at its first attach ([`super::attach`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapError},
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use otel_sendmmsg_common::{
    call_metrics::{metric_flags, MetricSettings, MAX_BOUNDS},
    filter, FilterSettings, KernelOffsets,
};
use tracing::{debug, info, warn};

use super::{
    kernel::{Kernel, TRACEFS},
    shared_context::{self, SharedMap},
};
use crate::{
    call_metrics::histogram,
    cgroup,
    config::{CallStore, Config, ConfigError, KernelMessages, MetricsOutput, Output, ParentRule},
};

/// The programs with each thread's call in task-local storage.
static TASK_STORAGE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-sendmmsg.bpf.o"));
/// The same programs with the calls in a hash map keyed by thread id.
static HASH_MAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-sendmmsg-hash-map.bpf.o"));

/// Tracing programs may use task-local storage from this release on (the map itself came in
/// 5.11, for LSM programs only).
const TASK_STORAGE_SINCE: (u8, u8) = (5, 12);

/// Which object to load first, and whether the hash map's may follow if the kernel refuses it.
fn objects(store: CallStore) -> Vec<(&'static str, &'static [u8])> {
    let task_storage = ("task-local storage", TASK_STORAGE_OBJECT);
    let hash_map = ("a hash map by thread id", HASH_MAP_OBJECT);
    let (major, minor) = TASK_STORAGE_SINCE;
    match store {
        CallStore::TaskStorage => vec![task_storage],
        CallStore::HashMap => vec![hash_map],
        CallStore::Auto => {
            let here = KernelVersion::current();
            if here.is_ok_and(|v| v >= KernelVersion::new(major, minor, 0)) {
                vec![task_storage, hash_map]
            } else {
                info!("calls in flight: a hash map by thread id (tracing programs have task-local storage from Linux {major}.{minor})");
                vec![hash_map]
            }
        }
    }
}

/// The object as loaded, its programs not yet in the kernel.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// The shared trace-context map existed before us: entries of threads that died meanwhile
    /// may be in it.
    pub sweep_dead_contexts: bool,
}

/// Loads the BPF object, sized and configured by `config`, with the shared trace-context map
/// where it can be used.
pub fn object(config: &Config, kernel: &Kernel) -> Result<Loaded> {
    if let Some(why) = kernel.locked_down() {
        bail!(why);
    }
    ensure_tracefs()?;
    let memlock = raise_memlock_limit();
    let self_tgid = std::process::id();
    let wrapper = u32::from(kernel.syscall_symbol.as_ref().is_none_or(|(_, wrapped)| *wrapped));
    let offsets = kernel.offsets.clone().unwrap_or_else(|why| {
        warn!("{why}: spans will carry no socket context (network.*)");
        KernelOffsets::default()
    });
    let filters = &config.filters;
    if !filters.comms.is_empty() && offsets.valid == 0 {
        warn!("without kernel BTF, OTEL_SENDMMSG_COMMS matches thread names, not process names");
    }
    let cgroup_ids = cgroup_ids(&filters.cgroups)?;
    let sampler = &filters.sampler;
    // Shares of the ranges the kernel compares with: a random u32 for roots, the trace id's
    // random bits for calls with a parent (always_on's 1 takes all of it: an unsampled parent's
    // calls are traced too).
    let trace_id_range = 1u64 << filter::TRACE_ID_RANDOM_BITS;
    let (trace_id_ratio, trace_id_below) = match sampler.with_parent {
        ParentRule::FollowFlag => (false, 0),
        ParentRule::TraceIdRatio(ratio) => (true, (ratio * trace_id_range as f64) as u64),
    };
    let settings = FilterSettings {
        flags: [
            (!filters.pids.is_empty(), filter::PIDS),
            (!filters.comms.is_empty(), filter::COMMS),
            (!filters.cgroups.is_empty(), filter::CGROUPS),
            (filters.errors_only, filter::ERRORS_ONLY),
            (sampler.root_ratio < 1.0, filter::SAMPLE_ROOTS),
            (trace_id_ratio, filter::TRACE_ID_RATIO),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, bit)| flags | bit),
        root_below: (sampler.root_ratio * f64::from(u32::MAX)) as u32,
        min_duration_ns: u64::try_from(filters.min_duration.as_nanos()).unwrap_or(u64::MAX),
        trace_id_below,
    };
    let (metric_settings, bounds) = call_metrics_settings(config);
    let load = |object: &[u8], pin: Option<PathBuf>| {
        let mut loader = EbpfLoader::new();
        // The kernel's BTF is already parsed: the loader would parse its own copy otherwise.
        loader.btf(kernel.btf.as_ref().ok());
        // aya 0.14 has no type for task storage maps; only the BPF side uses them.
        loader.allow_unsupported_maps();
        if let Some(path) = pin {
            loader.map_pin_path("TRACES_CTX", path);
        }
        loader
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("SYSCALL_WRAPPER", &wrapper, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("FILTERS", &settings, true)
            .override_global("METRIC_SETTINGS", &metric_settings, true)
            .override_global(
                "SIZES_AT_EXIT",
                &u32::from(config.kernel_messages == KernelMessages::SizesAtExit),
                true,
            )
            // Wake the reader once an eighth of the ring is pending; its timer drains the rest.
            .override_global("WAKEUP_BYTES", &u64::from(config.ring_buffer_bytes / 8), true)
            // The hash map store's (task storage has no size).
            .map_max_entries("INFLIGHT", config.max_inflight)
            // Only calls that the metrics alone count go there.
            .map_max_entries(
                "COUNTED_INFLIGHT",
                if metric_settings.counts_only() { config.max_inflight } else { 1 },
            )
            .map_max_entries("THREAD_CONTEXT_ACCESS", config.max_context_processes)
            .map_max_entries("RECORDS", config.ring_buffer_bytes)
            .map_max_entries("CALL_METRICS", config.call_metrics.max_series)
            .load(object)
    };
    let load_error = |e: EbpfError| privilege_hint(anyhow!(e).context("loading the BPF object"), memlock);
    let shared = shared_context::prepare();
    let pinned = matches!(shared, SharedMap::Pinned { .. });
    let mut candidates = objects(config.call_store).into_iter().peekable();
    let (store, object, mut ebpf) = loop {
        let (store, object) = candidates.next().expect("at least one object to load");
        let loaded = match load(object, shared.loader_path()) {
            Err(EbpfError::MapError(e @ MapError::PinError { .. })) if pinned => {
                shared_context::refuse(&format!("{:#}", anyhow!(e)));
                load(object, None)
            }
            loaded => loaded,
        };
        match loaded {
            Ok(ebpf) => break (store, object, ebpf),
            Err(e) if candidates.peek().is_some() => {
                info!("calls in flight: {store} refused ({:#}); trying the next store", anyhow!(e));
            }
            Err(e) => return Err(load_error(e)),
        }
    };
    info!("calls in flight: {store}");
    if pinned {
        if let Err(why) = shared_context::loaded_info(&ebpf).and_then(|info| shared.confirm(&info)) {
            shared_context::refuse(&why);
            ebpf = load(object, None).map_err(load_error)?;
        }
    }
    let mut table = Array::<_, [u64; MAX_BOUNDS]>::try_from(
        ebpf.map_mut("DURATION_BOUNDS").context("map DURATION_BOUNDS missing")?,
    )?;
    table.set(0, bounds, 0).context("writing the duration histogram's bounds")?;
    fill_set(&mut ebpf, "FILTER_PIDS", filters.pids.iter().copied())?;
    fill_set(&mut ebpf, "FILTER_COMMS", filters.comms.iter().map(|c| comm_key(c)))?;
    fill_set(&mut ebpf, "FILTER_CGROUPS", cgroup_ids)?;
    let sweep = matches!(shared, SharedMap::Pinned { existing: Some(_), .. });
    Ok(Loaded { ebpf, sweep_dead_contexts: sweep })
}

/// What the kernel counts for the call metrics, and the bounds of their duration histogram.
/// They are counted when metrics go to a collector; with `OTEL_TRACES_EXPORTER=none` as well,
/// no call becomes a span (metrics only).
fn call_metrics_settings(config: &Config) -> (MetricSettings, [u64; MAX_BOUNDS]) {
    let table = histogram::bounds_ns(&config.call_metrics.histogram);
    let mut bounds = [u64::MAX; MAX_BOUNDS];
    bounds[..table.len()].copy_from_slice(&table);
    if !config.call_metrics.on || !matches!(config.metrics, MetricsOutput::Otlp { .. }) {
        return (MetricSettings::default(), bounds);
    }
    let flags = [
        (true, metric_flags::ON),
        (config.output == Output::Discard, metric_flags::SPANS_OFF),
        (config.call_metrics.by_peer, metric_flags::BY_PEER),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |flags, (_, bit)| flags | bit);
    (MetricSettings { flags, bounds: table.len() as u32 }, bounds)
}

/// Puts every key in the BPF hash map `name` (a set: the value is unused).
fn fill_set<K: aya::Pod>(ebpf: &mut Ebpf, name: &str, keys: impl IntoIterator<Item = K>) -> Result<()> {
    let mut set =
        HashMap::<_, K, u8>::try_from(ebpf.map_mut(name).with_context(|| format!("map {name} missing"))?)?;
    for key in keys {
        set.insert(key, 1, 0)
            .with_context(|| format!("filling the filter map {name} (too many entries?)"))?;
    }
    Ok(())
}

/// A process name as the kernel stores it: NUL-padded to TASK_COMM_LEN.
fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..name.len()].copy_from_slice(name.as_bytes());
    key
}

/// The cgroup v2 ids of each configured directory and of every cgroup below it now. A missing
/// directory is the user's setting to fix.
fn cgroup_ids(entries: &[PathBuf]) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in entries {
        let dir = cgroup::resolve(entry);
        if !cgroup::is_cgroup(&dir) {
            let value = entries.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(",");
            let accepts = format!("existing cgroup v2 directories; {} is not one", dir.display());
            return Err(ConfigError { variable: "OTEL_SENDMMSG_CGROUPS".into(), value, accepts }.into());
        }
        ids.extend(cgroup::ids_below(&dir).with_context(|| format!("listing cgroup {}", dir.display()))?);
    }
    Ok(ids)
}

/// Tracepoints and kprobes are found through tracefs, which is not mounted on every boot.
pub fn ensure_tracefs() -> Result<()> {
    match std::fs::read_dir(Path::new(TRACEFS).join("events")) {
        Ok(_) => return Ok(()),
        // Mounted, but closed to us: mounting again would not help.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "tracefs at {TRACEFS} refuses access ({e}): a security module (lockdown, SELinux, \
             AppArmor) denies it; allow the sidecar to read tracefs"
        ),
        Err(_) => {}
    }
    info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let status = std::process::Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed; mount it with \
             `mount -t tracefs nodev {TRACEFS}` (as root), or bind-mount it into the container"
        ),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it. Lifting it
/// takes CAP_SYS_RESOURCE, which the sidecar is not given: the limit left in place (bytes) when
/// it could not be lifted, `None` when it is unlimited.
pub fn raise_memlock_limit() -> Option<u64> {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid resource id and pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return None;
    }
    let mut kept = unlimited;
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut kept) };
    debug!("could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11");
    (kept.rlim_cur != libc::RLIM_INFINITY).then_some(kept.rlim_cur)
}

/// The running kernel charges BPF maps to RLIMIT_MEMLOCK: before 5.11 (later ones charge the
/// cgroup).
pub fn maps_charged_to_memlock() -> bool {
    KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 11, 0))
}

/// Adds the likely fix to a load error that comes from missing privileges; `memlock`: what
/// [`raise_memlock_limit`] left.
fn privilege_hint(err: anyhow::Error, memlock: Option<u64>) -> anyhow::Error {
    let text = format!("{err:#}");
    let refused = ["Operation not permitted", "EPERM", "Permission denied"].iter().any(|t| text.contains(t));
    if !refused {
        return err;
    }
    // The capabilities were checked at start: a map refused under a kept limit is the limit.
    match memlock {
        Some(limit) if maps_charged_to_memlock() && text.contains("failed to create map") => {
            err.context(format!(
                "the kernel refused to create BPF maps: kernels before 5.11 charge them to \
             RLIMIT_MEMLOCK, which is {} KiB for the sidecar and takes CAP_SYS_RESOURCE to lift; \
             run it with the limit lifted (docker: --ulimit memlock=-1, compose: `ulimits: memlock: \
             -1`, systemd: LimitMEMLOCK=infinity) or grant it CAP_SYS_RESOURCE",
                limit / 1024
            ))
        }
        _ => err
            .context("the kernel refused to load BPF programs: run as root, or with CAP_BPF and CAP_PERFMON"),
    }
}
