//! A directory in bpffs whose pins only its owner can change, reached without following links.
//!
//! bpffs is often mounted world-writable (mode 1777), so a name under it proves nothing: another
//! user may have created it, as a directory of their own, a symlink, or a pin of their own map.
//! The directory is opened once, without following a symlink, and judged through its descriptor;
//! every later step (its pins' checks, opening and pinning maps) goes through that descriptor,
//! so renaming or replacing names afterwards changes nothing. A directory that belongs to us or
//! root and that nobody else may write cannot have its entries swapped behind our back.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{openat, OFlag, AT_FDCWD},
    sys::{
        stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag},
        statfs::{fstatfs, FsType},
    },
};

/// `BPF_FS_MAGIC` from linux/magic.h.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A directory's entries can be added, renamed or removed by whoever may write it: group and
/// others must not. Reading or searching it gives nothing (each pin has its own mode), so a
/// 0755 directory, as older versions of this sidecar and other tools made, is still ours.
const DIR_FORBIDDEN: u32 = 0o022;
/// A pin opens its map to whoever may read (look up) or write (update) it: the owner only.
const PIN_FORBIDDEN: u32 = 0o077;

/// A directory in bpffs that belongs to this process's effective user or to root and that no
/// one else may write, open by descriptor.
#[derive(Debug)]
pub struct PinDir {
    fd: OwnedFd,
    /// For messages only: nothing is looked up by this path.
    path: PathBuf,
}

/// A pin (a bpffs file standing for a map) in a [`PinDir`], held by an `O_PATH` descriptor, so
/// checking it and opening its map reach the same inode.
#[derive(Debug)]
pub struct Pin {
    fd: OwnedFd,
    pub stat: FileStat,
}

impl PinDir {
    /// Opens the directory `name` of the bpffs mounted at `root`, creating it (mode 0700) when
    /// it is missing. The error says, in one phrase, why it cannot be trusted.
    pub fn open_or_create(root: &Path, name: &str) -> Result<PinDir, String> {
        let path = root.join(name);
        let shown = path.display();
        // The mount point itself is root's: following links to it is fine.
        let root_fd =
            openat(AT_FDCWD, root, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
        if !is_bpffs(&root_fd) {
            return Err(format!("{} is not a bpffs mount", root.display()));
        }
        let created = match mkdirat(&root_fd, name, Mode::S_IRWXU) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(format!("cannot create {shown}: {e}")),
        };
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let fd = match openat(&root_fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(format!("{shown} is {}, not a directory", describe_entry(&root_fd, name)))
            }
            Err(e) => return Err(format!("cannot open {shown}: {e}")),
        };
        if created {
            // mkdir applies the umask; the mode we need does not depend on it.
            fchmod(&fd, Mode::S_IRWXU).map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
        }
        let stat = fstat(&fd).map_err(|e| format!("cannot stat {shown}: {e}"))?;
        if !is_bpffs(&fd) {
            return Err(format!("{shown} is not on bpffs"));
        }
        check_owner_and_mode(&stat, DIR_FORBIDDEN, "the directory", &shown.to_string())?;
        Ok(PinDir { fd, path })
    }

    /// The pin `name` as it is now; `None` when there is none. Refused unless it is a plain
    /// pin (not a symlink) of a trusted owner that no one else may open.
    pub fn pin(&self, name: &str) -> Result<Option<Pin>, String> {
        let path = self.path.join(name);
        let shown = path.display().to_string();
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(format!("cannot open {shown}: {e}")),
        };
        // With O_PATH | O_NOFOLLOW a symlink is opened itself, not followed: its type says so.
        let stat = fstat(&fd).map_err(|e| format!("cannot stat {shown}: {e}"))?;
        if file_type(&stat) != SFlag::S_IFREG {
            return Err(format!("{shown} is {}, not a pin", describe(&stat)));
        }
        check_owner_and_mode(&stat, PIN_FORBIDDEN, "the pin", &shown)?;
        Ok(Some(Pin { fd, stat }))
    }

    /// A path to `name` inside this very directory, whatever has been renamed since, for calls
    /// that take a path (`BPF_OBJ_PIN`, aya's loader).
    pub fn path_of(&self, name: &str) -> PathBuf {
        proc_fd_path(&self.fd).join(name)
    }
}

impl Pin {
    /// A path to this very pin, for calls that take a path (`BPF_OBJ_GET`): the kernel resolves
    /// `/proc/self/fd/N` to the inode the descriptor holds, not to whatever the name means now.
    pub fn path(&self) -> PathBuf {
        proc_fd_path(&self.fd)
    }

    /// Makes a pin we created readable and writable by its owner only, whatever the umask left
    /// (the kernel creates pins with 0600 minus the umask), and checks the result.
    pub fn restrict(&mut self, shown: &str) -> Result<(), String> {
        let wanted = (Mode::S_IRUSR | Mode::S_IWUSR).bits();
        if self.stat.st_mode & 0o7777 != wanted {
            // fchmod refuses O_PATH descriptors; chmod through the descriptor's link does not.
            nix::sys::stat::fchmodat(
                AT_FDCWD,
                &self.path(),
                Mode::from_bits_truncate(wanted),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
            self.stat = fstat(&self.fd).map_err(|e| format!("cannot stat {shown}: {e}"))?;
        }
        check_owner_and_mode(&self.stat, PIN_FORBIDDEN, "the pin", shown)
    }
}

fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn is_bpffs(fd: &impl AsFd) -> bool {
    fstatfs(fd).is_ok_and(|s| s.filesystem_type() == FsType(BPF_FS_MAGIC as _))
}

/// This process's effective user: with root, the owners we trust.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Ours or root's (root needs no pin to reach us: OBI's pins are root's), and without the
/// `forbidden` permission bits.
fn check_owner_and_mode(stat: &FileStat, forbidden: u32, what: &str, shown: &str) -> Result<(), String> {
    let me = euid();
    if stat.st_uid != me && stat.st_uid != 0 {
        let not = if me == 0 { "root".to_owned() } else { format!("this sidecar's user (uid {me}) or root") };
        return Err(format!("{what} {shown} belongs to uid {}, not to {not}", stat.st_uid));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & forbidden != 0 {
        let who = if forbidden == DIR_FORBIDDEN { "write to it" } else { "use it" };
        return Err(format!("{what} {shown} has mode {mode:04o}: group or others may {who}"));
    }
    Ok(())
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

fn describe(stat: &FileStat) -> &'static str {
    match file_type(stat) {
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a file",
        _ => "a special file",
    }
}

/// What `name` in `dir` is, without following it.
fn describe_entry(dir: &impl AsFd, name: &str) -> &'static str {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => describe(&stat),
        Err(_) => "gone",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(uid: u32, mode: u32) -> FileStat {
        // SAFETY: FileStat is plain data; zero is a valid value for every field.
        let mut stat: FileStat = unsafe { std::mem::zeroed() };
        stat.st_uid = uid;
        stat.st_mode = mode;
        stat
    }

    #[test]
    fn only_ours_or_roots_and_closed_to_others() {
        let me = euid();
        let dir = |uid, mode| check_owner_and_mode(&stat(uid, mode), DIR_FORBIDDEN, "the directory", "d");
        let pin = |uid, mode| check_owner_and_mode(&stat(uid, mode), PIN_FORBIDDEN, "the pin", "p");
        assert_eq!(dir(me, 0o40700), Ok(()));
        assert_eq!(dir(0, 0o40755), Ok(()), "others may look, not change");
        assert_eq!(pin(0, 0o100600), Ok(()));
        assert_eq!(pin(0, 0o100400), Ok(()));
        assert!(dir(4321, 0o40700).unwrap_err().contains("belongs to uid 4321"));
        assert!(pin(4321, 0o100600).unwrap_err().contains("belongs to uid 4321"));
        for loose in [0o40777, 0o40770, 0o41777, 0o40702] {
            assert!(dir(me, loose).unwrap_err().contains(&format!("mode {:04o}", loose & 0o7777)));
        }
        for loose in [0o100660, 0o100604, 0o100640] {
            assert!(pin(me, loose).unwrap_err().contains(&format!("mode {:04o}", loose & 0o7777)));
        }
    }
}
