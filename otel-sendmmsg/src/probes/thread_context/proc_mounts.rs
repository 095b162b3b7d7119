//! Which filesystem a mapped file lives on, from `/proc/PID/mountinfo`, before anything touches
//! the file. Reading mountinfo asks no filesystem anything; a lookup, `fstat` or read on a FUSE
//! file asks its owner, who may never answer, and a thread waiting on a request already read by
//! the owner cannot even be killed until it is answered (`request_wait_answer`, fs/fuse/dev.c):
//! the sidecar could not exit. So files on FUSE, and files whose filesystem the process no longer
//! has mounted (a FUSE mount can be detached and its files kept mapped), are never looked into.

use std::{io, path::Path, sync::OnceLock};

use super::proc_maps::read_capped;

/// A busy container host has a few thousand mounts of ~150 bytes.
const MOUNTINFO_BYTES: u64 = 4 << 20;

/// One mount, as a line of mountinfo gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Field 1, the id `statx(STATX_MNT_ID)` returns for a file reached through this mount.
    pub id: u64,
    /// Field 3, `major:minor` in decimal: the superblock's device, which the maps line names
    /// (btrfs gives `fstat` another one per subvolume).
    pub dev: u64,
    /// The field after the ` - ` separator.
    pub fstype: String,
}

/// The mounts of one mountinfo text; lines not in its shape are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let fields: Vec<&str> = line.split(' ').collect();
            let id = fields.first()?.parse().ok()?;
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
            // Optional fields (shared:N, master:N) come before the separator.
            let separator = fields.iter().skip(6).position(|&f| f == "-")? + 6;
            let fstype = fields.get(separator + 1)?.to_string();
            Some(Mount { id, dev, fstype })
        })
        .collect()
}

/// The filesystems a process's files may be on.
#[derive(Debug, Default)]
pub struct Filesystems {
    mounts: Vec<Mount>,
}

impl Filesystems {
    /// Those of process `/proc/PID` (`process`); none if its mountinfo cannot be read.
    pub fn of(process: &Path) -> Filesystems {
        let read = || -> io::Result<Vec<u8>> {
            read_capped(std::fs::File::open(process.join("mountinfo"))?, MOUNTINFO_BYTES)
        };
        Filesystems { mounts: read().map(|text| parse_mountinfo(&text)).unwrap_or_default() }
    }

    pub fn from_mounts(mounts: Vec<Mount>) -> Filesystems {
        Filesystems { mounts }
    }

    /// Why a file on device `dev` must not be looked into, if it must not.
    pub fn refuse(&self, dev: u64) -> Option<String> {
        if Some(dev) == memfd_device() {
            return None; // memfd and shared anonymous memory: the kernel's own shmem mount
        }
        let on: Vec<&Mount> = self.mounts.iter().filter(|m| m.dev == dev).collect();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        if on.is_empty() {
            return Some(format!(
                "its filesystem (device {major}:{minor}) is not mounted where the process is"
            ));
        }
        on.iter().find(|m| m.fstype == "fuseblk" || m.fstype == "fuse" || m.fstype.starts_with("fuse.")).map(|m| {
            format!(
                "it is on a FUSE filesystem ({}, device {major}:{minor}), which its owner serves and may leave \
                 unanswered",
                m.fstype
            )
        })
    }

    /// The ids of the mounts of device `dev`: a file opened through one of them is on that
    /// filesystem, whatever device `fstat` reports.
    pub fn mount_ids(&self, dev: u64) -> Vec<u64> {
        self.mounts.iter().filter(|m| m.dev == dev).map(|m| m.id).collect()
    }
}

/// The device of the kernel's internal shmem mount, where every memfd lives (it is in nobody's
/// mountinfo): learnt once from a memfd of our own.
fn memfd_device() -> Option<u64> {
    static DEVICE: OnceLock<Option<u64>> = OnceLock::new();
    *DEVICE.get_or_init(|| {
        // SAFETY: a NUL-terminated name; the result is a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"otel-sendmmsg-probe".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the descriptor just returned to us alone.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        std::os::unix::fs::MetadataExt::dev(&file.metadata().ok()?).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /proc rw,nosuid shared:12 - proc proc rw
40 22 0:35 / /home/u/mnt rw,nosuid,nodev,relatime shared:20 master:3 - fuse.sshfs u@h:/ rw,user_id=1000
41 22 0:36 / /media/usb rw - fuseblk /dev/sdb1 rw
42 22 0:37 / /var/lib/x\\040y rw - overlay overlay rw,lowerdir=/a
43 22 0:38 / /broken rw shared:1
";

    #[test]
    fn mountinfo_fields_are_read_around_the_optional_ones() {
        let mounts = parse_mountinfo(MOUNTINFO.as_bytes());
        let summary: Vec<(u64, u32, u32, &str)> = mounts
            .iter()
            .map(|m| (m.id, libc::major(m.dev), libc::minor(m.dev), m.fstype.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (22, 254, 0, "ext4"),
                (25, 0, 23, "proc"),
                (40, 0, 35, "fuse.sshfs"),
                (41, 0, 36, "fuseblk"),
                (42, 0, 37, "overlay"),
            ]
        );
    }

    #[test]
    fn fuse_and_unmounted_filesystems_are_refused_local_ones_and_memfd_are_not() {
        let fs = Filesystems::from_mounts(parse_mountinfo(MOUNTINFO.as_bytes()));
        assert_eq!(fs.refuse(libc::makedev(254, 0)), None);
        assert_eq!(fs.refuse(libc::makedev(0, 37)), None);
        assert!(fs.refuse(libc::makedev(0, 35)).unwrap().contains("FUSE filesystem (fuse.sshfs"));
        assert!(fs.refuse(libc::makedev(0, 36)).unwrap().contains("FUSE filesystem (fuseblk"));
        assert!(fs.refuse(libc::makedev(0, 99)).unwrap().contains("not mounted where the process is"));
        assert_eq!(fs.refuse(memfd_device().expect("memfd_create")), None);
        assert_eq!(fs.mount_ids(libc::makedev(254, 0)), vec![22]);
    }

    #[test]
    fn a_files_mount_id_is_one_of_its_processs_mounts() {
        let fs = Filesystems::of(Path::new("/proc/self"));
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let id = super::super::mapped_file::mount_id(&exe).expect("statx STATX_MNT_ID");
        let mount = fs.mounts.iter().find(|m| m.id == id).expect("the executable's mount");
        assert!(fs.mount_ids(mount.dev).contains(&id));
        assert_eq!(fs.refuse(mount.dev), None, "{mount:?}");
    }
}
