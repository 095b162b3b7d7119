//! otel-sendmmsg: `sendmmsg(2)` calls as OpenTelemetry spans.
//!
//! The data path, top-down: kernel hooks ([`probes`]) -> ring buffer -> typed records
//! ([`records`]) -> complete spans under their process's resource ([`span`]) -> exporter
//! ([`export`]); [`run`] wires it together.

pub mod call_metrics;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod export;
pub mod health;
pub mod memory;
pub mod names;
pub mod privileges;
pub mod probes;
pub mod process;
pub mod records;
pub mod resource_attributes;
pub mod run;
pub mod self_metrics;
pub mod sendmmsg;
pub mod shutdown;
pub mod span;
