"""The default guest: a minimal Linux kernel and a busybox initramfs, built into the cache.

Nothing here is committed binary: `xvm images build` compiles Debian's
linux-source-6.1 with kernel.config, fetches busybox-static with
`apt-get download` and writes the initramfs with xvm's own cpio writer, all into
`${XDG_CACHE_HOME:-~/.cache}/xvm`.

    images = default_guest()                # builds on first use, with progress on stderr
    append = "console=ttyS0 panic=-1 " + command_cmdline(["uname", "-a"])

/init (init.sh) runs the command given by command_cmdline() and writes its exit
status as one byte to I/O port 0xF4 (the debug-exit device); without a command
it starts a shell on the console and writes 0 there when the shell exits.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xvm.errors import ConfigError, ImageError
from xvm.images.busybox import busybox_path
from xvm.images.cache import cache_dir
from xvm.images.debian_kernel import find_debian_kernel, pull_debian_kernel
from xvm.images.initramfs import build_initramfs
from xvm.images.kernel import build_kernel, find_kernel
from xvm.images.progress import Progress

__all__ = [
    "DEMO_COMMAND",
    "GuestImages",
    "ImageError",
    "Progress",
    "cache_dir",
    "command_cmdline",
    "default_guest",
]

KINDS = ("minimal", "debian")

# The kernel command-line parameter /init reads its command from. No '.' in the
# name, so Linux hands it to init's environment instead of treating it as a
# module parameter (init/main.c, unknown_bootoption).
COMMAND_PARAM = "xvmcmd"

# x86 COMMAND_LINE_SIZE is 2048 bytes (arch/x86/include/uapi/asm/setup.h); leave
# room for the console, panic and device parameters around the command.
MAX_COMMAND_PARAM = 1536

# Run when there is neither a terminal nor a command: shows the guest is alive.
DEMO_COMMAND = [
    "sh",
    "-c",
    'uname -a; echo "CPUs: $(nproc)"; grep -m1 "model name" /proc/cpuinfo; head -1 /proc/meminfo; '
    "echo xvm demo done: run xvm in a terminal for a shell, or xvm run -- CMD",
]


@dataclass(frozen=True)
class GuestImages:
    kernel: Path  # bzImage
    initrd: Path  # uncompressed newc cpio with busybox and /init
    kind: str  # "minimal" or "debian"

    @property
    def boot_kernel(self) -> Path:
        """The image xvm boots: the uncompressed vmlinux (PVH entry) when the build kept one.

        PVH skips the bzImage decompressor: measured on the bt engine, 63 M guest
        instructions to the command's output instead of 86 M.
        """
        vmlinux = self.kernel.with_name("vmlinux")
        return vmlinux if vmlinux.is_file() else self.kernel


def command_cmdline(argv: Sequence[str]) -> str:
    """The command-line fragment that makes /init run `argv` instead of a shell.

    The arguments are shell-quoted into one command line and base64-encoded so
    spaces, quotes and '=' survive the kernel's parameter parsing; /init decodes
    it with `base64 -d` and runs it with `sh -c`.
    """
    if not argv:
        raise ConfigError("no command given after --: name the program to run in the guest")
    script = " ".join(shlex.quote(arg) for arg in argv)
    param = f"{COMMAND_PARAM}={base64.b64encode(script.encode()).decode('ascii')}"
    if len(param) > MAX_COMMAND_PARAM:
        raise ConfigError(
            f"the command is too long for the kernel command line ({len(script)} bytes, "
            f"at most about {MAX_COMMAND_PARAM * 3 // 4 - len(COMMAND_PARAM)}): put it in a script on a disk"
        )
    return param


def default_guest(build: bool = True, progress: Optional[Progress] = None, kind: str = "minimal") -> GuestImages:
    """Return the cached default guest, building (or pulling) what is missing when `build`.

    kind "minimal" is xvm's own kernel (`xvm images build`); "debian" is Debian's
    cloud kernel (`xvm images pull --debian`). Both use the same initramfs.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown guest kind {kind!r}: use one of {', '.join(KINDS)}")
    finder, maker, fix = {
        "minimal": (find_kernel, build_kernel, "xvm images build"),
        "debian": (find_debian_kernel, pull_debian_kernel, "xvm images pull --debian"),
    }[kind]
    directory = finder()
    if (directory is None or not busybox_path().is_file()) and not build:
        raise ImageError(f"the default guest is not built: run `{fix}`")
    if directory is None:
        progress = progress or Progress()
        progress.message(f"the {kind} guest kernel is not in {cache_dir()} yet: running `{fix}` (once)")
        directory = maker(progress)
    initrd = build_initramfs(progress)
    return GuestImages(kernel=directory / "bzImage", initrd=initrd, kind=kind)
