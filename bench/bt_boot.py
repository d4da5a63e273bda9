"""Boot of the default Linux guest on the bt engine (CPython and PyPy) against QEMU TCG and KVM, in one run.

Each machine boots the default guest (bench/boot.py's kernel, initramfs and
`echo xvm-bench-ready` command) and we time, from process start, the
kernel's "Run /init" line and the command's first output line. The bt rows
also give the guest instructions bt retired over the whole run (`--stats`)
and the guest MIPS that makes. Boots are slow on bt, so the default is one
run each.

    python bench/bt_boot.py                                  # every machine, 1 run each
    python bench/bt_boot.py --machines xvm-bt-pypy,qemu-tcg-pc --runs 2

Machines: xvm-bt (bt on this interpreter; XVM_NO_PYPY=1 keeps it there),
xvm-bt-pypy (bt on `pypy3`), qemu-tcg-pc (bzImage), qemu-tcg-microvm
(vmlinux, PVH), xvm-kvm, qemu-kvm-pc. A machine that does not reach the
first line is printed as a failure with its last console lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import CMDLINE, MARKER, Boot, boot_once, machine_command, median  # noqa: E402

from xvm.images import command_cmdline, default_guest  # noqa: E402

MACHINES = ("xvm-bt", "xvm-bt-pypy", "qemu-tcg-pc", "qemu-tcg-microvm", "xvm-kvm", "qemu-kvm-pc")


def instructions(boot: Boot) -> Optional[int]:
    """Guest instructions bt retired in this boot (all vCPUs), from its --stats JSON."""
    if not boot.stats:
        return None
    counts = [vcpu.get("guest_instructions") for vcpu in boot.stats.get("vcpus", [])]
    counts = [count for count in counts if count is not None]
    return sum(counts) if counts else None


def command_for(machine: str, kernel: Path, vmlinux: Optional[Path], initrd: Path, cmdline: str,
                timeout: float) -> Optional[list]:
    """bench/boot.py's command for `machine`, with xvm-bt-pypy as xvm-bt on pypy3."""
    python = sys.executable
    if machine == "xvm-bt-pypy":
        python = shutil.which("pypy3")
        if python is None:
            print(f"{machine}: skipped (pypy3 not installed: apt-get install pypy3)")
            return None
        machine = "xvm-bt"
    return machine_command(machine, kernel, vmlinux, initrd, cmdline, python, timeout)


def seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}s"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="boots per machine, median reported (default 1)")
    parser.add_argument("--machines", default=",".join(MACHINES),
                        help="comma-separated subset of " + ", ".join(MACHINES))
    parser.add_argument("--timeout", type=float, default=900, help="seconds before one boot is abandoned")
    args = parser.parse_args(argv)
    machines = [name.strip() for name in args.machines.split(",") if name.strip()]
    bad = [name for name in machines if name not in MACHINES]
    if bad or args.runs < 1:
        parser.error(f"unknown machine(s) {', '.join(bad)}" if bad else "--runs must be positive")
    # `xvm run --engine bt` re-executes itself under pypy3 when installed; xvm-bt measures this interpreter.
    os.environ["XVM_NO_PYPY"] = "1"

    images = default_guest(build=True)
    vmlinux = images.kernel.with_name("vmlinux")
    cmdline = f"{CMDLINE} {command_cmdline(['echo', MARKER])}"
    rows = []
    for machine in machines:
        command = command_for(machine, images.kernel, vmlinux if vmlinux.exists() else None, images.initrd,
                              cmdline, args.timeout)
        if command is None:
            continue
        boots = []
        for run in range(args.runs):
            boot = boot_once(command, args.timeout)
            boots.append(boot)
            failure = "" if boot.first_line is not None else "  FAILED: " + " | ".join(boot.tail)
            print(f"{machine} run {run + 1}: init={seconds(boot.init)} first line={seconds(boot.first_line)} "
                  f"exit={seconds(boot.exit)} status={boot.returncode}{failure}", flush=True)
            if boot.first_line is None:
                break
        rows.append((machine, boots))

    qemu = median([boot.first_line for machine, boots in rows if machine == "qemu-tcg-pc" for boot in boots])
    print(f"\n{'machine':<17} {'to /init':>9} {'first line':>11} {'vs qemu-tcg-pc':>15} "
          f"{'guest instructions':>19} {'MIPS':>7}")
    for machine, boots in rows:
        init = median([boot.init for boot in boots])
        first = median([boot.first_line for boot in boots])
        counts = [count for count in (instructions(boot) for boot in boots) if count is not None]
        exits = median([boot.exit for boot in boots if instructions(boot) is not None])
        ratio = f"{first / qemu:.1f}x" if first and qemu else "-"
        count = f"{int(median(counts))}" if counts else "-"
        mips = f"{median(counts) / exits / 1e6:.2f}" if counts and exits else "-"
        print(f"{machine:<17} {seconds(init):>9} {seconds(first):>11} {ratio:>15} {count:>19} {mips:>7}")
    print("\nguest instructions: retired by bt over the whole run (to exit); MIPS = that / exit time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
