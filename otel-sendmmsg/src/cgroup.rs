//! cgroup v2: where it is mounted, and the ids the kernel reports for cgroups
//! (`bpf_get_current_cgroup_id` returns the directory's inode number).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where cgroup v2 is usually mounted; hybrid hosts mount it at `/sys/fs/cgroup/unified`.
const DEFAULT_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroup v2 mount point, from the mount table.
pub fn v2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    v2_mount_in(&mountinfo).unwrap_or_else(|| PathBuf::from(DEFAULT_MOUNT))
}

/// The mount point of the first `cgroup2` file system in `/proc/self/mountinfo` text: the
/// fifth field, with the type after the ` - ` separator.
fn v2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        fields.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// An `OTEL_SENDMMSG_CGROUPS` entry as a directory: absolute as given, else under the mount.
pub fn resolve(entry: &Path) -> PathBuf {
    if entry.is_absolute() {
        entry.to_owned()
    } else {
        v2_mount().join(entry)
    }
}

/// Whether `dir` is a cgroup v2 directory (it has the file every cgroup has).
pub fn is_cgroup(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file() && dir.join("cgroup.controllers").is_file()
}

/// The ids of `dir` and of every cgroup below it now.
pub fn ids_below(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        ids.push(std::fs::metadata(&dir)?.ino());
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_whether_unified_or_hybrid() {
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(v2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "25 22 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      35 25 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        assert_eq!(v2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v2_mount_in("26 25 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"), None);
    }

    #[test]
    fn the_mount_of_this_machine_is_a_cgroup() {
        assert!(is_cgroup(&v2_mount()), "{}", v2_mount().display());
    }
}
