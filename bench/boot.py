"""Boot time of the default Linux guest: xvm against QEMU, in one run, side by side.

Every machine boots the same kernel, initramfs and command line and runs
`echo xvm-bench-ready` through /init. For each boot we record, from process
start: the kernel's "Run /init as init process" line, the first line /init's
command prints, and process exit. The table shows medians and the ratio to
QEMU+KVM (and to QEMU TCG, which on a PVM host boots far faster than KVM);
xvm's runs also report its exit counts by reason (--stats).

On a PVM host (/dev/kvm served by kvm_pvm) QEMU+KVM gets the command-line
words xvm itself appends there (`noxsave clearcpuid=...`: features PVM's
emulator cannot execute) and `-cpu qemu64,+xsaveerptr`, so both run the
same guest configuration; a machine that does not reach the marker is
reported with the last lines of its console and of its stderr (for QEMU the
"KVM internal error" report with the failing instruction bytes).

    python bench/boot.py                          # 5 boots each, every machine that can run here
    python bench/boot.py --runs 3 --machines xvm-kvm,qemu-tcg-pc
    python bench/boot.py --machines xvm-bt --runs 1 --python pypy3

Not a test: prints a table (and --json for machine-readable figures). A machine
that fails to boot is reported with its last output lines, not hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xvm.arch.x86 import cpuid as cpuid_table  # noqa: E402
from xvm.engines.kvm import host  # noqa: E402
from xvm.images import command_cmdline, default_guest  # noqa: E402

MARKER = "xvm-bench-ready"
INIT_LINE = "Run /init as init process"
#: How QEMU reports a vCPU that KVM could not run (accel/kvm/kvm-all.c), before it pauses the VM for good.
QEMU_KVM_FAILURE = "KVM internal error"
CMDLINE = "console=ttyS0 panic=-1 reboot=t"
MACHINES = ("xvm-kvm", "xvm-bt", "qemu-kvm-microvm", "qemu-kvm-pc", "qemu-tcg-pc", "qemu-tcg-microvm")


@dataclass
class Boot:
    """One boot's timeline (seconds from process start; None when never seen)."""

    init: Optional[float] = None
    first_line: Optional[float] = None
    exit: Optional[float] = None
    returncode: Optional[int] = None
    tail: list = field(default_factory=list)
    stderr_tail: list = field(default_factory=list)
    stats: Optional[dict] = None

    def failure(self) -> str:
        """Why the marker never came: the last console and stderr lines."""
        lines = [line for line in self.tail if line.strip()] + [f"stderr: {line}" for line in self.stderr_tail]
        return " | ".join(lines[-12:])


def machine_command(machine: str, kernel: Path, vmlinux: Optional[Path], initrd: Path, cmdline: str,
                    python: str, timeout: float) -> Optional[list]:
    """The command line for one machine; None when it cannot run here (reason printed)."""
    if machine.startswith("xvm-"):
        # xvm boots what its default guest boots: the PVH vmlinux when there is one (as QEMU microvm does).
        engine = machine[len("xvm-"):]
        return [python, "-m", "xvm", "run", "--engine", engine, "--kernel", str(vmlinux or kernel),
                "--initrd", str(initrd), "--append", cmdline, "--timeout", str(timeout), "--stats"]
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print(f"{machine}: skipped (qemu-system-x86_64 not installed: apt-get install qemu-system-x86)")
        return None
    _, accel, board = machine.split("-")
    command = [qemu, "-M", board, "-m", "256", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
               "-initrd", str(initrd), "-append", cmdline]
    if board == "microvm":
        if vmlinux is None:
            print(f"{machine}: skipped (no vmlinux with a PVH entry next to the bzImage)")
            return None
        command += ["-kernel", str(vmlinux), "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
    else:
        command += ["-kernel", str(kernel), "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
    if accel == "kvm":
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            print(f"{machine}: skipped (/dev/kvm is not usable)")
            return None
        command += ["-enable-kvm", "-cpu", "qemu64,+xsaveerptr"]
        if host.detect_backend() == "pvm":
            # What xvm appends on PVM (KvmVm.linux_cmdline_hints), so QEMU runs the same guest setup.
            command[command.index("-append") + 1] += " " + cpuid_table.linux_clearcpuid(
                cpuid_table.PVM_MASKED_FEATURES)
    else:
        command += ["-accel", "tcg"]
    return command


def boot_once(command: list, timeout: float) -> Boot:
    """Run one boot, timestamping console lines as they arrive."""
    boot = Boot()
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace")
    stderr_lines: list = []

    def read_stderr() -> None:
        for line in process.stderr:
            stderr_lines.append(line)
            if line.startswith(QEMU_KVM_FAILURE):
                # QEMU pauses the VM and waits forever: let the register dump print, then end it.
                threading.Timer(2.0, process.kill).start()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    # The stdout loop below blocks while a hung guest prints nothing: kill it at the deadline.
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            now = time.monotonic() - start
            line = line.rstrip("\r\n")
            boot.tail = (boot.tail + [line])[-8:]
            if boot.init is None and INIT_LINE in line:
                boot.init = now
            if boot.first_line is None and line.strip() == MARKER:
                boot.first_line = now
        boot.returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        boot.returncode = process.wait()
    finally:
        watchdog.cancel()
    boot.exit = time.monotonic() - start
    reader.join(timeout=5)
    # Without xvm's --stats JSON (the lines that open with "{", "}" or indentation).
    messages = [line.rstrip("\n") for line in stderr_lines if line.strip() and not line.startswith((" ", "{", "}"))]
    # The first lines say what failed (QEMU: "KVM internal error. Suberror: 1"), the last ones where ("Code=").
    boot.stderr_tail = messages if len(messages) <= 4 else messages[:2] + messages[-2:]
    stats_text = "".join(stderr_lines)
    if "{" in stats_text:
        try:
            boot.stats = json.loads(stats_text[stats_text.index("{"):])
        except ValueError:
            pass
    return boot


def median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="boots per machine (median reported)")
    parser.add_argument("--machines", default=",".join(MACHINES),
                        help="comma-separated subset of " + ", ".join(MACHINES))
    parser.add_argument("--timeout", type=float, default=900, help="seconds before one boot is abandoned")
    parser.add_argument("--python", default=sys.executable, help="interpreter for xvm (e.g. pypy3 for bt)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    images = default_guest(build=True)
    vmlinux = images.kernel.with_name("vmlinux")
    cmdline = f"{CMDLINE} {command_cmdline(['echo', MARKER])}"
    results = {}
    for machine in args.machines.split(","):
        command = machine_command(machine, images.kernel, vmlinux if vmlinux.exists() else None, images.initrd,
                                  cmdline, args.python, args.timeout)
        if command is None:
            continue
        boots = []
        for run in range(args.runs):
            boot = boot_once(command, args.timeout)
            boots.append(boot)
            ok = boot.first_line is not None
            failure = "" if ok else "  FAILED: " + boot.failure()
            print(f"{machine} run {run + 1}: init={_fmt(boot.init)} first line={_fmt(boot.first_line)} "
                  f"exit={_fmt(boot.exit)} status={boot.returncode}{failure}", flush=True)
            if not ok:
                break
        results[machine] = boots

    print()
    references = ("qemu-kvm-microvm", "qemu-kvm-pc", "qemu-tcg-pc")
    print(f"{'machine':<18} {'runs':>4} {'to /init':>10} {'first line':>11} {'exit':>9}   "
          f"exit time vs {' / '.join(references)}")
    reference = {name: _median_of_good(results.get(name, []), "exit") for name in references}
    summary = {}
    for machine, boots in results.items():
        init, first, done = (_median_of_good(boots, f) for f in ("init", "first_line", "exit"))
        good = sum(b.first_line is not None for b in boots)
        ratios = "  ".join(f"{done / ref:6.2f}x" if done and ref else "     -" for ref in reference.values())
        print(f"{machine:<18} {good:>4} {_fmt(init):>10} {_fmt(first):>11} {_fmt(done):>9}   {ratios}")
        summary[machine] = {"init": init, "first_line": first, "exit": done, "runs": len(boots), "good": good}
        if not good:
            print(f"{'':<18} did not boot: {boots[-1].failure()}")
            summary[machine]["failure"] = boots[-1].failure()
        vcpus = [b.stats.get("vcpus") for b in boots if b.stats and b.stats.get("vcpus")]
        if vcpus:
            # Per-vCPU counts include the PVM fallback's (pvm_fallback_*, pvm_iret32, pvm_fwait).
            print(f"{'':<18} exits by reason (last run): {_merged(vcpus[-1])}")
            summary[machine]["exits"] = _merged(vcpus[-1])
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def _median_of_good(boots: list, name: str) -> Optional[float]:
    """Median of one timeline field over the boots that reached the marker."""
    return median([getattr(b, name) for b in boots if b.first_line is not None])


def _merged(vcpus: list) -> dict:
    """The vCPUs' exit counts summed by reason, largest first."""
    total: dict = {}
    for counts in vcpus:
        for reason, count in counts.items():
            total[reason] = total.get(reason, 0) + count
    return dict(sorted(total.items(), key=lambda item: -item[1]))


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}s"


if __name__ == "__main__":
    sys.exit(main())
