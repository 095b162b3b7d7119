//! Opens the file a mapping really names, and nothing else. The path in `/proc/PID/maps` is only
//! a claim: the owner can rename, replace or unlink the file, put a symlink, a FIFO or a device
//! where it was, or the path may be misread. Every open here is `O_PATH` first (no driver's
//! `open` runs, nothing can block), then `fstat` must show a regular file with the mapping's
//! device and inode; only then is it opened for reading, through the descriptor itself.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use super::proc_maps::{FileId, Mapping};

/// A regular file proved to be the one a process maps, open for reading.
#[derive(Debug)]
pub struct MappedFile {
    pub file: File,
    pub id: FileId,
    /// Its size when it was checked: the most anything read from it may claim.
    pub len: u64,
    /// Through which path it was reached, for the log.
    pub via: PathBuf,
}

/// Opens the file `mapping` maps in process `/proc/PID` (`process`).
///
/// First through `/proc/PID/map_files/<start>-<end>`, the kernel's own link to the mapped file
/// (it reaches a deleted file too, and needs no path at all). Following those links takes
/// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the initial user namespace
/// (`proc_map_files_get_link`, fs/proc/base.c, 6.18) besides ptrace-read access to the process;
/// without them, each path the maps line can mean, under the process's root. `mounts` are the
/// process's mounts of the mapping's device (see [`checked`]).
pub fn open(process: &Path, mapping: &Mapping, mounts: &[u64]) -> Result<MappedFile, String> {
    let link = process.join("map_files").join(mapping.map_files_name());
    let first = match open_path(&link, libc::O_PATH | libc::O_CLOEXEC) {
        Ok(fd) => match checked(fd, mapping.file, mounts) {
            Ok(fd) => return readable(fd, mapping.file, link),
            Err(e) => e,
        },
        Err(e) => format!("{}: {e}", link.display()),
    };
    let root = open_path(&process.join("root"), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .map_err(|e| format!("{first}; {}/root: {e}", process.display()))?;
    let mut why = vec![first];
    for path in mapping.candidate_paths() {
        let via = process.join("root").join(path.strip_prefix("/").unwrap_or(&path));
        match open_beneath(&root, &path)
            .and_then(|fd| checked(fd, mapping.file, mounts).map_err(io::Error::other))
        {
            Ok(fd) => return readable(fd, mapping.file, via),
            Err(e) => why.push(format!("{}: {e}", via.display())),
        }
    }
    Err(why.join("; "))
}

/// Opens `path` inside the directory `root` with `O_PATH|O_NOFOLLOW`, refusing every symlink on
/// the way (RESOLVE_NO_SYMLINKS, which takes magic links with it) and treating `root` as `/`
/// (RESOLVE_IN_ROOT): the maps text is `d_path`'s canonical path, which holds no symlink, so one
/// found there was put in since and leads somewhere the process may have chosen for us — an
/// absolute symlink would even be resolved against our root, not the process's. Kernels before
/// 5.6 lack openat2: there a plain `openat` follows directory symlinks, and the device and
/// inode check is all that stands; it is enough to never read another file.
fn open_beneath(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let name = CString::new(relative.as_os_str().as_bytes()).map_err(io::Error::other)?;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a valid directory descriptor, a NUL-terminated name and an open_how of the size
    // passed; the result is a new descriptor we own, or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor to us alone.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::ENOSYS) {
        return Err(error);
    }
    // SAFETY: as above, for openat.
    let fd = unsafe {
        libc::openat(root.as_raw_fd(), name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    owned(fd)
}

fn open_path(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name; the result is a new descriptor or -1.
    owned(unsafe { libc::open(name.as_ptr(), flags) })
}

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: an open descriptor and a stat buffer the kernel fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Keeps `fd` only if it is a regular file with the mapping's identity: its inode, on the
/// mapping's device. The device is the one `fstat` gives, or, where a filesystem reports
/// another there (btrfs gives each subvolume a device of its own, while maps names the
/// superblock's), the file's mount must be one of `mounts`, the process's mounts of that device.
/// On overlayfs the maps line and `fstat` agree (measured on 6.18, through both ways of opening).
fn checked(fd: OwnedFd, expected: FileId, mounts: &[u64]) -> Result<OwnedFd, String> {
    let st = fstat(&fd).map_err(|e| format!("fstat: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("not a regular file (mode {:o})", st.st_mode));
    }
    let on_device = st.st_dev == expected.dev || mount_id(&fd).is_some_and(|id| mounts.contains(&id));
    if st.st_ino == expected.ino && on_device {
        return Ok(fd);
    }
    Err(format!("another file (device {:#x} inode {}) than the one mapped", st.st_dev, st.st_ino))
}

/// The id of the mount `fd` was opened through (`statx` STATX_MNT_ID, Linux 5.8), as the first
/// field of mountinfo gives it.
pub(crate) fn mount_id(fd: &impl AsRawFd) -> Option<u64> {
    // SAFETY: a statx buffer the kernel fills.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor, an empty NUL-terminated path with AT_EMPTY_PATH, and the buffer.
    let done = unsafe {
        libc::statx(fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, &mut stx)
    };
    (done == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Opens the checked `O_PATH` descriptor for reading through `/proc/self/fd/N`: the kernel
/// follows that magic link to exactly the inode already checked, whatever is at any path now.
/// `O_NONBLOCK` and a second `fstat` are belt and braces: it cannot have become another file.
fn readable(fd: OwnedFd, id: FileId, via: PathBuf) -> Result<MappedFile, String> {
    let checked_as =
        fstat(&fd).map(|st| (st.st_dev, st.st_ino)).map_err(|e| format!("{}: fstat: {e}", via.display()))?;
    let again = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let reopened = open_path(&again, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .map_err(|e| format!("{}: reopening for reading: {e}", via.display()))?;
    let st = fstat(&reopened).map_err(|e| format!("{}: fstat: {e}", via.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_dev, st.st_ino) != checked_as {
        return Err(format!("{}: changed identity when reopened", via.display()));
    }
    Ok(MappedFile { file: File::from(reopened), id, len: st.st_size.max(0) as u64, via })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::probes::thread_context::proc_maps::executable_mappings;

    /// This test process's own executable mapping of `path` (mapped by the test first).
    fn mapping_of(path: &Path) -> Mapping {
        let maps = std::fs::read("/proc/self/maps").unwrap();
        executable_mappings(&maps).into_iter().find(|m| m.path == path).expect("mapped")
    }

    /// Maps `path` executable into this process, as a library would be.
    fn map_exec(path: &Path) -> (File, *mut libc::c_void, usize) {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a fresh private mapping of an open file; unmapped by the test.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        (file, addr, len)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("otel-sendmmsg-mapped-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_mapped_file_is_opened_whatever_its_name_and_a_replacement_is_refused() {
        let dir = scratch("replace");
        let path = dir.join("lib with space\nand newline.so");
        std::fs::write(&path, vec![0x90u8; 8192]).unwrap();
        let (_file, addr, len) = map_exec(&path);
        let mapping = mapping_of(&path);
        let opened = open(Path::new("/proc/self"), &mapping, &[]).unwrap();
        assert_eq!(opened.id.ino, std::fs::metadata(&path).unwrap().ino());
        assert_eq!(opened.len, 8192);

        // Replaced by a symlink to a file of the same content, then by a FIFO: neither is the
        // mapped file. As root, map_files still reaches the real one.
        std::fs::rename(&path, dir.join("moved.so")).unwrap();
        std::os::unix::fs::symlink(dir.join("moved.so"), &path).unwrap();
        let via_path = open_fallback_only(&mapping);
        assert!(via_path.is_err(), "{via_path:?}");
        std::fs::remove_file(&path).unwrap();
        nix_mkfifo(&path);
        let via_path = open_fallback_only(&mapping);
        assert!(via_path.unwrap_err().contains("not a regular file"));
        if is_root() {
            let opened = open(Path::new("/proc/self"), &mapping, &[]).unwrap();
            assert_eq!(opened.via, Path::new("/proc/self/map_files").join(mapping.map_files_name()));
        }
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, len) };
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// `open` as it goes without CAP_SYS_ADMIN: through the paths only.
    fn open_fallback_only(mapping: &Mapping) -> Result<MappedFile, String> {
        let mut unmappable = mapping.clone();
        unmappable.end += 1; // no such map_files entry
        open(Path::new("/proc/self"), &unmappable, &[])
    }

    fn nix_mkfifo(path: &Path) {
        let name = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated name.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    fn is_root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_symlinked_directory_on_the_way_is_refused() {
        let dir = scratch("dirlink");
        std::fs::create_dir(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/lib.so"), vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let root = open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        assert!(open_beneath(&root, &dir.join("real/lib.so")).is_ok());
        let refused = open_beneath(&root, &dir.join("link/lib.so")).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{refused}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A container's file: mapped from an overlayfs mount. Its identity in maps is what `fstat`
    /// gives, through map_files and through the path (mounting needs root).
    #[test]
    fn a_file_on_overlayfs_is_opened_both_ways() {
        if !is_root() {
            eprintln!("skipped: mounting overlayfs needs root");
            return;
        }
        let dir = scratch("overlay");
        for sub in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("lower/lib.so"), vec![0x90u8; 8192]).unwrap();
        let options = format!("lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work", dir.display());
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(dir.join("merged"))
            .status()
            .unwrap();
        assert!(status.success(), "mount -t overlay");
        let path = dir.join("merged/lib.so");
        let (file, addr, len) = map_exec(&path);
        let mapping = mapping_of(&path);
        // Only where each was reached from: the descriptors must be closed before unmounting.
        let through_map_files = open(Path::new("/proc/self"), &mapping, &[]).map(|f| f.via);
        let through_path = open_fallback_only(&mapping).map(|f| f.via);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, len) };
        drop(file);
        let unmounted = std::process::Command::new("umount").arg(dir.join("merged")).status().unwrap();
        assert!(unmounted.success(), "umount");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(through_map_files.unwrap().starts_with("/proc/self/map_files"));
        assert!(through_path.unwrap().ends_with("merged/lib.so"));
    }

    /// Where `fstat` reports another device than maps (btrfs subvolumes), the file's mount
    /// vouches for the device; without such a mount, the other device is another file.
    #[test]
    fn a_device_fstat_does_not_report_is_accepted_through_the_files_mount_only() {
        let dir = scratch("mount-id");
        let path = dir.join("lib.so");
        std::fs::write(&path, [0u8; 64]).unwrap();
        let fd = open_path(&path, libc::O_PATH | libc::O_CLOEXEC).unwrap();
        let mount = mount_id(&fd).expect("statx STATX_MNT_ID");
        let ino = std::fs::metadata(&path).unwrap().ino();
        let subvolume = FileId { dev: libc::makedev(0, 4242), ino };
        let fd = checked(fd, subvolume, &[mount]).expect("its own mount vouches for it");
        assert!(checked(fd, subvolume, &[mount + 1]).unwrap_err().contains("another file"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
