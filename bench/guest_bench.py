"""What the test-guest benchmarks (bt_mips.py, pio_exits.py) share: machines, their commands, timed runs.

A machine is `xvm-<engine>` (xvm on this Python), `xvm-bt-pypy` (xvm's bt
engine on `pypy3`) or `qemu-<accel>`; each boots a tests/guests kernel with a
command line such as `count=N` and exits through the debug-exit port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
#: The guest's exit status when it wrote 0 to the debug-exit port ((0 << 1) | 1).
GUEST_OK = 1


def python_for(machine: str) -> Optional[str]:
    """The interpreter an xvm machine runs on (None for QEMU, or when pypy3 is missing)."""
    if machine == "xvm-bt-pypy":
        return shutil.which("pypy3")
    return sys.executable if machine.startswith("xvm-") else None


def command(machine: str, kernel: Path, cmdline: str, timeout: float, stats: bool = False) -> list:
    """The command line that boots `kernel` on `machine` (`stats`: xvm prints --stats JSON on stderr)."""
    if machine.startswith("xvm-"):
        engine = "kvm" if machine == "xvm-kvm" else "bt"
        return [python_for(machine), "-m", "xvm", "run", "--engine", engine, "--kernel", str(kernel),
                "--append", cmdline, "--mem", "64M", "--timeout", f"{timeout:g}"] + (["--stats"] if stats else [])
    accel = machine[len("qemu-"):]
    return ["qemu-system-x86_64", "-M", "pc", "-accel", accel, "-m", "64", "-kernel", str(kernel),
            "-append", cmdline, "-display", "none", "-serial", "stdio", "-monitor", "none", "-nodefaults",
            "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


def unavailable(machine: str) -> Optional[str]:
    """Why `machine` cannot run on this host, or None."""
    if machine.endswith("-kvm") and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm missing or not permitted"
    if machine.startswith("qemu-") and shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed"
    if machine.startswith("xvm-") and python_for(machine) is None:
        return "pypy3 not installed (Debian: apt-get install pypy3)"
    return None


def time_run(argv: list, timeout: float, passed: Callable[[str], bool]) -> tuple:
    """(wall seconds, stderr) of one run; RuntimeError unless it exited GUEST_OK with `passed(stdout)`."""
    start = time.perf_counter()
    try:
        result = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                errors="replace", timeout=timeout + 30)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"no exit within {timeout + 30:g} s") from error
    elapsed = time.perf_counter() - start
    if result.returncode != GUEST_OK or not passed(result.stdout):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit status {result.returncode}: {last}")
    return elapsed, result.stderr
