# A FUSE filesystem with one file, /environ, whose every read waits forever: what a process can
# serve itself and map as its own environment, so that whoever reads /proc/PID/environ blocks in
# the kernel. Prints "mounted" once serving and "read OFFSET SIZE" for each read it swallows.
# usage: /usr/bin/python3 stuck_fuse.py MOUNTPOINT   (Debian's python3-fusepy)
import errno
import stat
import sys
import threading

from fusepy import FUSE, FuseOSError, Operations

SIZE = 1 << 20
never = threading.Event()


class Stuck(Operations):
    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/environ":
            return dict(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=SIZE)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "environ"]

    def open(self, path, flags):
        return 0

    def read(self, path, size, offset, fh):
        print(f"read {offset} {size}", flush=True)
        never.wait()
        return b""

    def init(self, path):
        print("mounted", flush=True)


FUSE(Stuck(), sys.argv[1], foreground=True, allow_other=True, ro=True)
