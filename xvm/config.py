"""Frozen machine configuration, validated once before anything is built.

Everything the builder needs is here; nothing else reads CLI flags. Sizes are
accepted the way users type them ("512M", "2G", "1024" = MiB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from xvm.arch.x86 import layout
from xvm.errors import ConfigError

ENGINES = ("auto", "kvm", "bt")
CLOCKS = ("virtual", "host")
MAX_CPUS = 64
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 reboot=t"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_mem_size(text: str) -> int:
    """'512M', '2G', '1024' (MiB) -> size in MiB."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ConfigError(f"--mem {text!r} is not a size: use e.g. 256M or 2G")
    number, unit = int(match.group(1)), match.group(2).upper()
    size = number << _SIZE_SHIFT[unit]
    if size % (1 << 20):
        raise ConfigError(f"--mem {text!r} is not a whole number of MiB")
    return size >> 20


@dataclass(frozen=True)
class BootConfig:
    """What to boot: a kernel (bzImage or multiboot), an initrd and a command line."""

    kernel: Optional[Path] = None
    initrd: Optional[Path] = None
    cmdline: str = DEFAULT_CMDLINE


@dataclass(frozen=True)
class DiskConfig:
    """A virtio-blk disk backed by a raw host file."""

    path: Path
    read_only: bool = False
    cache: str = "writeback"


@dataclass(frozen=True)
class NetConfig:
    """A virtio-net interface: `mode` is 'tap' or 'user'."""

    mode: str
    ifname: Optional[str] = None
    mac: Optional[str] = None


@dataclass(frozen=True)
class MachineConfig:
    """A whole machine. `validate()` raises ConfigError with the fix for bad values."""

    mem_mib: int = 256
    cpus: int = 1
    engine: str = "auto"
    boot: BootConfig = field(default_factory=BootConfig)
    disks: tuple[DiskConfig, ...] = ()
    nets: tuple[NetConfig, ...] = ()
    #: Add a virtio-console device (hvc0) besides the serial console.
    virtio_console: bool = False
    #: Seconds before the VM is stopped (None: no limit).
    timeout: Optional[float] = None
    #: bt engine time source: 'virtual' (from the instruction count) or 'host'.
    clock: str = "virtual"
    #: Print engine statistics when the VM stops.
    stats: bool = False
    #: bt engine: print every executed instruction.
    trace: bool = False

    @property
    def mem_bytes(self) -> int:
        return self.mem_mib << 20

    def validate(self) -> MachineConfig:
        """Check every field; return self so calls chain."""
        if not layout.MIN_MEM_MIB <= self.mem_mib <= layout.MAX_MEM_MIB:
            raise ConfigError(
                f"--mem {self.mem_mib}M is out of range: use {layout.MIN_MEM_MIB}M to {layout.MAX_MEM_MIB // 1024}G"
            )
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"--cpus {self.cpus} is out of range: use 1 to {MAX_CPUS}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r} is unknown: use one of {', '.join(ENGINES)}")
        if self.clock not in CLOCKS:
            raise ConfigError(f"--clock {self.clock!r} is unknown: use one of {', '.join(CLOCKS)}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout {self.timeout} must be a positive number of seconds")
        for label, path in (("--kernel", self.boot.kernel), ("--initrd", self.boot.initrd)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(
                    f"{label} {path}: no such file (check the path, or omit it to boot the default guest)"
                )
        for disk in self.disks:
            if not Path(disk.path).is_file():
                raise ConfigError(
                    f"--disk {disk.path}: no such file (create it, e.g. with truncate -s 1G or xvm images build)"
                )
            if disk.cache not in ("none", "writeback"):
                raise ConfigError(f"--disk cache={disk.cache!r} is unknown: use cache=none or cache=writeback")
        for net in self.nets:
            if net.mode not in ("tap", "user"):
                raise ConfigError(f"--net {net.mode!r} is unknown: use --net tap[=NAME] or --net user")
        return self
