"""Guest MIPS of the bt engine on a CPU-bound guest, against QEMU TCG and KVM.

The guest (tests/guests/cpu_bound.asm) does N rounds of integer arithmetic,
a memory copy and a small sieve, then writes to the debug-exit port. Every
machine boots it with count=0 and with count=N; the difference of the
median wall times is the time of the work alone (boot and teardown cancel
out). The work's instruction count comes from bt itself (`--stats`,
guest_instructions at N minus at 0). Every round runs the same code, so
each machine is credited with bt's instructions per round times its own N:
the machines differ ~1000x in speed, and one N cannot be both long enough
to time QEMU and short enough for bt on CPython. MIPS = instructions / seconds.

    python bench/bt_mips.py                                  # every machine that runs here
    python bench/bt_mips.py --machines xvm-bt-pypy,qemu-tcg --count 200
    python bench/bt_mips.py --profile                        # where bt's time goes (CPython cProfile)
    python bench/bt_mips.py --profile-boot --timeout 120     # the same for the default Linux guest

Machines: xvm-bt (this Python), xvm-bt-pypy (`pypy3`), qemu-tcg, xvm-kvm and
qemu-kvm (with /dev/kvm). Not a test: prints a table and the ratios to QEMU
TCG. A machine that cannot run here is reported with the reason and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

from guest_bench import REPO, command, time_run, unavailable

sys.path.insert(0, str(REPO / "tests"))

from guests.build import build_all  # noqa: E402  (needs the path above)

GUEST = "cpu_bound"
MACHINES = ("xvm-bt", "xvm-bt-pypy", "qemu-tcg", "xvm-kvm", "qemu-kvm")
#: Rounds per machine (~140k guest instructions each): some seconds of work on each, and enough
#: for PyPy's JIT to warm up (300 rounds: 2 MIPS; 800: 8 MIPS).
#: The kvm machines are slow on a PVM host, where KVM emulates guest ring-0 code instruction by instruction.
COUNTS = {"xvm-bt": 20, "xvm-bt-pypy": 800, "qemu-tcg": 10000, "xvm-kvm": 40, "qemu-kvm": 40}


def guest_instructions(stderr: str) -> Optional[int]:
    """bt's retired-instruction count from the `--stats` JSON at the end of stderr."""
    text = "\n" + stderr
    start = text.find("\n{\n")
    if start < 0:
        return None
    try:
        stats, _ = json.JSONDecoder().raw_decode(text[start + 1:])
    except ValueError:
        return None
    counts = [vcpu.get("guest_instructions") for vcpu in stats.get("vcpus", [])]
    counts = [count for count in counts if count is not None]
    return sum(counts) if counts else None


def measure(machine: str, kernel: Path, count: int, repeat: int, timeout: float) -> tuple:
    """(work seconds, work instructions or None): median(count=N) - median(count=0)."""
    medians = []
    instructions = []
    for n in (0, count):
        argv = command(machine, kernel, f"count={n}", timeout, stats=True)
        runs = [time_run(argv, timeout, lambda stdout: "FAIL" not in stdout) for _ in range(repeat)]
        medians.append(statistics.median(seconds for seconds, _ in runs))
        instructions.append(guest_instructions(runs[0][1]))
    work = instructions[1] - instructions[0] if None not in instructions else None
    return medians[1] - medians[0], work


def profile_vcpus(xvm_argv: list, top: int = 25) -> None:
    """Run `xvm <xvm_argv>` in this process with cProfile on every vCPU thread; print the top functions.

    `python -m cProfile -m xvm run` profiles only the main thread, which just
    waits for the VM to stop: the guest runs in Machine._vcpu_loop threads.
    """
    import cProfile
    import pstats

    sys.path.insert(0, str(REPO))
    os.environ["XVM_NO_PYPY"] = "1"  # profile this interpreter, not a pypy3 re-exec
    from xvm.cli import main as xvm_main
    from xvm.machine.machine import Machine

    profiles = []
    vcpu_loop = Machine._vcpu_loop

    def profiled_loop(machine: Machine, vcpu) -> None:
        profiler = cProfile.Profile()
        profiles.append(profiler)
        profiler.runcall(vcpu_loop, machine, vcpu)

    Machine._vcpu_loop = profiled_loop
    try:
        status = xvm_main(xvm_argv)
    finally:
        Machine._vcpu_loop = vcpu_loop
    print(f"xvm exit status {status}; vCPU threads profiled: {len(profiles)}")
    if profiles:
        stats = pstats.Stats(*profiles)
        for order in ("tottime", "cumulative"):
            print(f"\nby {order}:")
            stats.sort_stats(order).print_stats(top)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="rounds of work per run on every machine "
                        f"(default per machine: {', '.join(f'{m} {n}' for m, n in COUNTS.items())})")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; the median counts (default 3)")
    parser.add_argument("--machines", default=",".join(MACHINES),
                        help=f"comma-separated, from {', '.join(MACHINES)} (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take (default 900)")
    parser.add_argument("--profile", action="store_true",
                        help="only profile one xvm-bt run of the guest (CPython cProfile on the vCPU thread)")
    parser.add_argument("--profile-boot", action="store_true",
                        help="only profile bt booting the default Linux guest (`echo hi`, up to --timeout)")
    parser.add_argument("--guest", default=GUEST,
                        help="a guest of tests/guests that takes count=N (default %(default)s)")
    args = parser.parse_args(argv)
    machines = [name.strip() for name in args.machines.split(",") if name.strip()]
    bad = [name for name in machines if name not in MACHINES]
    if bad or (args.count is not None and args.count < 1) or args.repeat < 1:
        parser.error(f"unknown machine(s) {', '.join(bad)}" if bad else "--count and --repeat must be positive")

    if args.profile_boot:
        profile_vcpus(["run", "--engine", "bt", "--timeout", f"{args.timeout:g}", "--", "echo", "hi"])
        return 0
    kernel = build_all([args.guest])[args.guest]
    if args.profile:
        count = args.count or COUNTS["xvm-bt"]
        profile_vcpus(["run", "--engine", "bt", "--kernel", str(kernel), "--append", f"count={count}",
                       "--mem", "64M", "--timeout", f"{args.timeout:g}"])
        return 0
    # xvm-bt stays on this interpreter (`xvm run --engine bt` re-executes under pypy3 otherwise).
    os.environ["XVM_NO_PYPY"] = "1"
    print(f"{args.guest} guest, median of {args.repeat} runs per point\n")
    print(f"{'machine':<12} {'rounds':>7} {'work (s)':>10} {'instructions':>14} {'MIPS':>10}")
    per_round: Optional[float] = None
    results: dict = {}
    # bt machines first: they count the instructions the others are credited with.
    for machine in sorted(machines, key=lambda name: not name.startswith("xvm-bt")):
        count = args.count or COUNTS[machine]
        reason = unavailable(machine)
        if reason is None:
            try:
                seconds, counted = measure(machine, kernel, count, args.repeat, args.timeout)
            except RuntimeError as error:
                reason = str(error)
        if reason is not None:
            print(f"{machine:<12} skipped: {reason}")
            continue
        if counted is not None:
            per_round = counted / count
        if per_round is None or seconds <= 0:
            why = "run a bt machine to count instructions" if seconds > 0 else "too short to time: raise --count"
            print(f"{machine:<12} {count:7d} {seconds:10.3f} {'?':>14} {'?':>10}  ({why})")
            continue
        work_instructions = round(per_round * count)
        mips = work_instructions / seconds / 1e6
        results[machine] = mips
        print(f"{machine:<12} {count:7d} {seconds:10.3f} {work_instructions:14d} {mips:10.2f}")
    if "qemu-tcg" in results:
        print()
        for machine, mips in results.items():
            if machine != "qemu-tcg":
                print(f"{machine} / qemu-tcg: {mips / results['qemu-tcg']:.4f}  "
                      f"(qemu-tcg is {results['qemu-tcg'] / mips:.0f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
