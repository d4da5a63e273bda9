"""The default guest's initramfs: busybox, its applet links and xvm's /init.

Written uncompressed: the kernel unpacks a raw cpio with memcpy-like work,
whereas a gzip initramfs costs the guest tens of millions of instructions
(GUEST.md), which a software engine feels.

/dev/console and /dev/null are in the archive because the kernel opens
/dev/console for PID 1's stdio before /init can mount devtmpfs
(init/main.c, console_on_rootfs); without it early output is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from xvm.images.busybox import applets, fetch_busybox
from xvm.images.cache import atomic_write, cache_dir
from xvm.images.cpio import CpioWriter
from xvm.images.outb import outb_elf
from xvm.images.progress import Progress

INIT_SCRIPT = Path(__file__).with_name("init.sh")

# I/O port of the debug-exit device /init reports the command's status to.
DEBUG_EXIT_PORT = 0xF4

# (path, mode) in creation order; parents first, as the kernel's unpacker needs.
DIRECTORIES = (
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("root", 0o700),
    ("tmp", 0o1777),
)

# Device nodes needed before devtmpfs is mounted over /dev (Documentation/admin-guide/devices.txt).
DEVICES = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
)

# Just enough for id, whoami, ls -l and the shell prompt to name root.
ETC_FILES = (
    ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", b"root:x:0:\n"),
    ("etc/hosts", b"127.0.0.1\tlocalhost xvm\n"),
    ("etc/hostname", b"xvm\n"),
)


def initramfs_bytes(busybox: bytes, applet_paths: Sequence[str], init_script: bytes) -> bytes:
    """Return the newc archive holding /init, /bin/busybox and a symlink per applet."""
    writer = CpioWriter()
    for path, mode in DIRECTORIES:
        writer.directory(path, mode)
    for path, major, minor, mode in DEVICES:
        writer.char_device(path, major, minor, mode)
    for path, data in ETC_FILES:
        writer.file(path, data)
    writer.file("bin/busybox", busybox, mode=0o755)
    # For kernels without /dev/port (CONFIG_DEVPORT), e.g. Debian's cloud kernel.
    writer.file("bin/xvmexit", outb_elf(DEBUG_EXIT_PORT), mode=0o755)
    writer.file("init", init_script, mode=0o755)
    taken = set(writer.names)
    for applet in sorted(applet_paths):
        if applet not in taken:
            writer.symlink(applet, "/bin/busybox")
            taken.add(applet)
    return writer.finish()


def initramfs_path() -> Path:
    return cache_dir() / "initramfs.cpio"


def build_initramfs(progress: Optional[Progress] = None) -> Path:
    """Write the initramfs into the cache (fetching busybox if needed) and return its path.

    The archive is rebuilt in memory on every call (milliseconds) and the file is
    rewritten only when its bytes change, so edits to init.sh take effect at once.
    """
    binary = fetch_busybox(progress)
    data = initramfs_bytes(binary.read_bytes(), applets(binary), INIT_SCRIPT.read_bytes())
    path = initramfs_path()
    if not path.exists() or path.read_bytes() != data:
        atomic_write(path, data)
    return path
