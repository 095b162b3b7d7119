//! The resource a call's spans go under: its process's, over the sidecar's own. Built once per
//! process and shared by all of its spans, so a call costs a lookup, not a resource.

use std::{num::NonZeroUsize, sync::Arc};

use lru::LruCache;
use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    resource::{ResourceDetector, TelemetryResourceDetector},
    Resource,
};

use crate::{config::ResourceSettings, process::ProcessInfo};

/// The sidecar's own resource attributes, which every process's resource starts from: the
/// SDK's `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES` (e.g. `host.name`, `k8s.node.name`).
/// The sidecar's own `OTEL_SERVICE_NAME` is not among them: a span's service is its process's.
///
/// `host.name` is this host's name unless the settings name it (a DaemonSet names its node, the
/// pod's own hostname being the pod's name).
pub fn base_resource(settings: &ResourceSettings) -> Vec<KeyValue> {
    let sdk = TelemetryResourceDetector.detect();
    let sdk = sdk.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).filter(|h| !h.is_empty());
    let host = host
        .filter(|_| !settings.attributes.iter().any(|(k, _)| k == "host.name"))
        .map(|h| KeyValue::new("host.name", h));
    let configured = settings.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    sdk.chain(host).chain(configured).collect()
}

/// The resource of a process's spans, as its own SDK would build it over the sidecar's: `base`,
/// then what the process declares (its `OTEL_RESOURCE_ATTRIBUTES`), then its service name, then
/// what the sidecar measured itself (pid, executable, container), which a process cannot
/// override by declaring otherwise.
pub fn resource_for(base: &[KeyValue], process: &ProcessInfo) -> Resource {
    let mut own = Vec::with_capacity(process.attributes.len() + 4);
    own.extend(process.attributes.iter().cloned());
    own.extend([
        KeyValue::new("service.name", process.service_name.clone()),
        KeyValue::new("process.pid", i64::from(process.pid)),
    ]);
    if let Some(name) = &process.executable_name {
        own.push(KeyValue::new("process.executable.name", name.clone()));
    }
    if let Some(id) = &process.container_id {
        own.push(KeyValue::new("container.id", id.clone()));
    }
    // Later attributes win.
    Resource::builder_empty().with_attributes(base.iter().cloned().chain(own)).build()
}

/// Each known process's resource, by pid, least recently used out (as many as the process
/// cache keeps). The same process gets the same `Arc` for as long as it stays here: spans
/// under one resource can be told apart from others by pointer.
pub struct Resources {
    base: Vec<KeyValue>,
    by_pid: LruCache<u32, (Arc<ProcessInfo>, Arc<Resource>)>,
}

impl Resources {
    pub fn new(base: Vec<KeyValue>, capacity: NonZeroUsize) -> Resources {
        Resources { base, by_pid: LruCache::new(capacity) }
    }

    /// `process`'s resource: the one already built when the process is the same (the same
    /// metadata, even read again into another `Arc`), else a new one, which replaces its pid's.
    pub fn of(&mut self, process: &Arc<ProcessInfo>) -> Arc<Resource> {
        if let Some((known, resource)) = self.by_pid.get_mut(&process.pid) {
            if Arc::ptr_eq(known, process) {
                return resource.clone();
            }
            if **known == **process {
                // Its next lookup is a pointer comparison again.
                *known = process.clone();
                return resource.clone();
            }
        }
        let resource = Arc::new(resource_for(&self.base, process));
        self.by_pid.put(process.pid, (process.clone(), resource.clone()));
        resource
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{Key, Value};

    use super::*;

    fn attr(resource: &Resource, key: &'static str) -> Option<Value> {
        resource.get(&Key::from_static_str(key))
    }

    fn checkout() -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            executable_name: Some("checkout-server".into()),
            service_name: "checkout".into(),
            container_id: Some("ab".repeat(32)),
            attributes: Vec::new(),
        }
    }

    #[test]
    fn a_process_resource_is_its_own_over_the_sidecars() {
        let base = vec![
            KeyValue::new("host.name", "node-1"),
            KeyValue::new("service.name", "from-resource-attributes"),
            KeyValue::new("telemetry.sdk.language", "rust"),
        ];
        let process = checkout();
        let resource = resource_for(&base, &process);
        assert_eq!(attr(&resource, "service.name"), Some(Value::from("checkout")));
        assert_eq!(attr(&resource, "process.pid"), Some(Value::I64(4242)));
        assert_eq!(attr(&resource, "process.executable.name"), Some(Value::from("checkout-server")));
        assert_eq!(attr(&resource, "container.id"), Some(Value::from("ab".repeat(32))));
        assert_eq!(attr(&resource, "host.name"), Some(Value::from("node-1")));
        assert_eq!(resource.len(), 6);

        let bare = ProcessInfo { executable_name: None, container_id: None, ..process };
        let resource = resource_for(&[], &bare);
        assert_eq!(attr(&resource, "process.executable.name"), None);
        assert_eq!(attr(&resource, "container.id"), None);
        assert_eq!(resource.len(), 2);
    }

    #[test]
    fn what_a_process_declares_is_over_the_sidecars_and_under_what_was_measured() {
        let base = vec![KeyValue::new("host.name", "node-1"), KeyValue::new("k8s.node.name", "node-1")];
        let process = ProcessInfo {
            attributes: vec![
                KeyValue::new("service.version", "2.1"),
                KeyValue::new("host.name", "app-host"),
                // A process cannot pass for another.
                KeyValue::new("process.pid", 1),
                KeyValue::new("container.id", "forged"),
            ],
            ..checkout()
        };
        let resource = resource_for(&base, &process);
        assert_eq!(attr(&resource, "service.version"), Some(Value::from("2.1")));
        assert_eq!(attr(&resource, "host.name"), Some(Value::from("app-host")));
        assert_eq!(attr(&resource, "k8s.node.name"), Some(Value::from("node-1")));
        assert_eq!(attr(&resource, "process.pid"), Some(Value::I64(4242)));
        assert_eq!(attr(&resource, "container.id"), Some(Value::from("ab".repeat(32))));
        assert_eq!(attr(&resource, "service.name"), Some(Value::from("checkout")));
    }

    #[test]
    fn host_name_is_this_hosts_unless_configured() {
        let unset = ResourceSettings { attributes: vec![], service_name: "s".into() };
        let host = base_resource(&unset);
        let named = |base: &[KeyValue]| base.iter().filter(|kv| kv.key.as_str() == "host.name").count();
        assert_eq!(named(&host), 1, "{host:?}");
        let configured = ResourceSettings {
            attributes: vec![("host.name".into(), "node-7".into())],
            service_name: "s".into(),
        };
        let base = base_resource(&configured);
        assert_eq!(named(&base), 1, "{base:?}");
        assert!(base.contains(&KeyValue::new("host.name", "node-7")));
    }

    #[test]
    fn the_base_resource_is_the_sdks_without_a_service_name() {
        let settings = ResourceSettings {
            attributes: vec![("host.name".into(), "node-1".into())],
            service_name: "the-sidecars-own".into(),
        };
        let base = base_resource(&settings);
        assert!(base.iter().any(|kv| kv.key.as_str() == "telemetry.sdk.name"), "{base:?}");
        assert!(base.contains(&KeyValue::new("host.name", "node-1")), "{base:?}");
        // The SDK's fallback `unknown_service` must not be added, nor the sidecar's own name.
        assert!(!base.iter().any(|kv| kv.key.as_str() == "service.name"), "{base:?}");
    }

    #[test]
    fn a_process_keeps_one_resource_until_it_changes() {
        let mut resources = Resources::new(vec![KeyValue::new("host.name", "node-1")], NonZeroUsize::MIN);
        let process = Arc::new(checkout());
        let first = resources.of(&process);
        assert!(Arc::ptr_eq(&first, &resources.of(&process)));
        // Read again from /proc: another Arc, the same process.
        let again = Arc::new(checkout());
        assert!(Arc::ptr_eq(&first, &resources.of(&again)));
        assert_eq!(*first, resource_for(&[KeyValue::new("host.name", "node-1")], &process));
        // An exec brought another service.
        let execed = Arc::new(ProcessInfo { service_name: "checkout-v2".into(), ..checkout() });
        let second = resources.of(&execed);
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(attr(&second, "service.name"), Some(Value::from("checkout-v2")));
        // Beyond the capacity the least recently used goes, and is built again when needed.
        let other = Arc::new(ProcessInfo { pid: 7, ..checkout() });
        resources.of(&other);
        assert!(!Arc::ptr_eq(&second, &resources.of(&execed)));
    }
}
