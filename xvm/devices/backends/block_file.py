"""Raw disk image files: the host end of a virtio-blk disk.

The guest's sectors are the file's bytes, one to one. Reads and writes go
straight between the file and guest RAM (`GuestMemory.view` windows handed to
preadv/pwritev), so a request costs one system call and no copy in Python.

Caching modes, as the user picks them with `--disk PATH,cache=...`:

* `writeback` (default): writes land in the host page cache; the guest's
  FLUSH request becomes fsync(2). This is what a guest with a write-back disk
  cache expects (virtio 1.2 5.2.6.2: without VIRTIO_BLK_F_FLUSH the guest
  would assume write-through; we offer FLUSH, so it flushes when it must).
* `none`: the file is opened O_DSYNC, so every write is on stable storage
  when its request completes. O_DIRECT would also bypass the page cache, but
  it needs the guest's buffers aligned to the host's logical block size,
  which virtio does not promise (descriptors can start anywhere), so it is
  not used.

The image is locked with flock(2) (shared for read-only, exclusive for
read-write) so two VMMs cannot write the same disk, as QEMU does by default.

qcow2 images are refused with the conversion command: no well-kept Python
library reads *and* writes qcow2 (libqcow is read-only).

    disk = RawFile(Path("rootfs.img"), read_only=False, cache="writeback")
    disk.read_into(0, [memory.view(gpa, 512)])
    disk.flush()
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from xvm.errors import ConfigError, DeviceError

SECTOR_SIZE = 512
# First bytes of a qcow/qcow2 image (QEMU docs/interop/qcow2.txt, "magic").
QCOW_MAGIC = b"QFI\xfb"
CACHE_MODES = ("writeback", "none")

# PyPy 3.9 has no preadv/pwritev: reads fall back to one read(2) per buffer, writes to one pwrite(2) of a copy.
_preadv = getattr(os, "preadv", None)
_pwritev = getattr(os, "pwritev", None)


class RawFile:
    """A raw image file (or host block device) addressed in bytes."""

    def __init__(self, path: Path, read_only: bool = False, cache: str = "writeback") -> None:
        if cache not in CACHE_MODES:
            raise ConfigError(f"--disk cache={cache!r} is unknown: use cache=none or cache=writeback")
        self.path = Path(path)
        self.read_only = read_only
        self.cache = cache
        flags = os.O_RDONLY if read_only else os.O_RDWR
        flags |= getattr(os, "O_CLOEXEC", 0)
        if cache == "none" and not read_only:
            flags |= os.O_DSYNC
        try:
            self.fd = os.open(str(self.path), flags)
        except OSError as error:
            hint = "check the path and permissions" + ("" if read_only else ", or add ,ro to open it read-only")
            raise ConfigError(f"--disk {self.path}: cannot open ({error.strerror}): {hint}") from error
        try:
            self._lock()
            self._refuse_qcow()
            mode = os.fstat(self.fd).st_mode
            # st_size is 0 for block devices; seeking to the end gives their size.
            self.size = os.lseek(self.fd, 0, os.SEEK_END) if stat.S_ISBLK(mode) else os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise
        # A file object over the same fd for readinto() when preadv is missing (PyPy).
        self._file = None if _preadv is not None else open(self.fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 (closed in close())

    def _lock(self) -> None:
        kind = fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX
        try:
            fcntl.flock(self.fd, kind | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ConfigError(
                f"--disk {self.path}: in use by another process (locked): stop it, or add ,ro on both"
            ) from error

    def _refuse_qcow(self) -> None:
        if os.pread(self.fd, 4, 0) == QCOW_MAGIC:
            raise ConfigError(
                f"--disk {self.path}: qcow2 images are not supported: convert it with "
                f"`qemu-img convert -O raw {self.path} {self.path.with_suffix('.raw')}`"
            )

    @property
    def sectors(self) -> int:
        """Capacity in 512-byte sectors (a trailing partial sector is not visible)."""
        return self.size // SECTOR_SIZE

    def read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Fill `buffers` in order from the file at `offset`; bytes past EOF read as zeros."""
        total = sum(len(b) for b in buffers)
        if _preadv is not None:
            done = _preadv(self.fd, list(buffers), offset) if buffers else 0
        else:
            os.lseek(self.fd, offset, os.SEEK_SET)
            done = 0
            for buffer in buffers:
                count = self._file.readinto(buffer)
                done += count
                if count < len(buffer):
                    break
        if done < total:
            self._zero_from(buffers, done)
        return total

    @staticmethod
    def _zero_from(buffers: Sequence[memoryview], start: int) -> None:
        """Zero every byte of `buffers` from overall position `start` on (short read at EOF)."""
        position = 0
        for buffer in buffers:
            end = position + len(buffer)
            if end > start:
                begin = max(start - position, 0)
                buffer[begin:] = bytes(len(buffer) - begin)
            position = end

    def write_from(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Write `buffers` in order to the file at `offset`; returns the byte count."""
        if self.read_only:
            raise DeviceError(f"{self.path} is read-only")
        total = 0
        if _pwritev is not None and len(buffers) > 1:
            total = _pwritev(self.fd, list(buffers), offset)
            # A short vectored write (disk full, signal) continues buffer by buffer below.
            buffers = _skip(buffers, total)
        elif len(buffers) > 1:
            # No pwritev (PyPy): one pwrite of a joined copy, not one per buffer. With cache=none
            # (O_DSYNC) every write(2) waits for stable storage: a 1 MiB request in 4 KiB guest
            # pages took 256 of those waits (0.2 MB/s) instead of one.
            buffers = [memoryview(b"".join(buffers))]
        for buffer in buffers:
            done = 0
            while done < len(buffer):
                done += os.pwrite(self.fd, buffer[done:], offset + total + done)
            total += done
        return total

    def flush(self) -> None:
        """Make every completed write durable (the guest's FLUSH request)."""
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            if self._file is not None:
                self._file.close()
            os.close(self.fd)
            self.fd = -1


def _skip(buffers: Sequence[memoryview], count: int) -> list[memoryview]:
    """The part of `buffers` after the first `count` bytes."""
    rest = []
    for buffer in buffers:
        if count >= len(buffer):
            count -= len(buffer)
            continue
        rest.append(buffer[count:])
        count = 0
    return rest
