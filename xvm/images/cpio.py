"""A writer for the cpio "newc" (SVR4, no CRC) format, the format Linux unpacks
as an initramfs.

Format (Linux Documentation/driver-api/early-userspace/buffer-format.rst): each
entry is a 110-byte ASCII header -- the magic "070701" and thirteen 8-digit
hexadecimal fields -- followed by the NUL-terminated name, padded so the data
starts on a 4-byte boundary, then the data, padded to 4 bytes again. The archive
ends with an entry named "TRAILER!!!".

The kernel's unpacker (init/initramfs.c) creates entries in archive order and
does not create missing parent directories, so the writer insists that every
parent has been added first. Inode numbers count up from 1 and every mtime is
fixed, so the same inputs always give the same bytes.

    writer = CpioWriter()
    writer.directory("dev")
    writer.char_device("dev/console", 5, 1)
    writer.file("init", script, mode=0o755)
    data = writer.finish()
"""

from __future__ import annotations

import stat

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Builds a newc archive in memory, entry by entry."""

    def __init__(self, mtime: int = 0) -> None:
        self.mtime = mtime
        self._chunks: list[bytes] = []
        self._next_ino = 1
        self._kinds: dict[str, int] = {"": stat.S_IFDIR}
        self._finished = False

    @property
    def names(self) -> list[str]:
        """Paths added so far, in archive order."""
        return [name for name in self._kinds if name]

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._add(path, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        # Linux reads the link target from the entry's data (init/initramfs.c do_symlink).
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        """Append the trailer and return the whole archive."""
        if not self._finished:
            self._entry(TRAILER, 0, b"", ino=0, nlink=1, rdev=(0, 0))
            self._finished = True
        return b"".join(self._chunks)

    def _add(self, path: str, mode: int, data: bytes, nlink: int = 1, rdev: tuple = (0, 0)) -> None:
        if self._finished:
            raise ValueError("cpio archive already finished")
        name = path.strip("/")
        parts = name.split("/")
        if not name or any(part in ("", ".", "..") for part in parts) or name == TRAILER:
            raise ValueError(f"bad cpio path {path!r}")
        if name in self._kinds:
            raise ValueError(f"duplicate cpio path {name!r}")
        parent = "/".join(parts[:-1])
        if not stat.S_ISDIR(self._kinds.get(parent, 0)):
            raise ValueError(f"cpio path {name!r} added before its directory {parent!r}")
        self._kinds[name] = mode
        self._entry(name, mode, data, ino=self._next_ino, nlink=nlink, rdev=rdev)
        self._next_ino += 1

    def _entry(self, name: str, mode: int, data: bytes, ino: int, nlink: int, rdev: tuple) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            self.mtime,
            len(data),
            0,  # devmajor: of the file system holding the file; unused
            0,  # devminor
            rdev[0],  # rdevmajor: of a device node
            rdev[1],  # rdevminor
            len(encoded),  # namesize, including the NUL
            0,  # check: only used by the "070702" CRC format
        )
        header = MAGIC + b"".join(b"%08X" % value for value in fields)
        assert len(header) == HEADER_SIZE
        # Every entry starts 4-aligned, so padding after header+name and after data keeps it so.
        self._chunks += [header, encoded, _pad4(HEADER_SIZE + len(encoded)), data, _pad4(len(data))]
