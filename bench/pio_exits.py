"""Cost of one PIO exit round trip: xvm against QEMU, on the same guest.

The guest is tests/guests/pio_loop.asm: N byte OUTs to port 0x80, then a
debug-exit write. Each machine boots it with count=N and with count=0; the
difference of the medians divided by N is the cost of one OUT, i.e. one exit
from the guest to the VMM and back (under KVM), or one emulated OUT (bt, TCG).
Boot and teardown cancel out.

    python bench/pio_exits.py                     # xvm kvm, QEMU KVM and TCG, N = 1e6
    python bench/pio_exits.py --count 100000 --repeat 5 --machines xvm-kvm,qemu-tcg
    python bench/pio_exits.py --machines xvm-bt --count 20000

Not a test: prints a table. A machine that cannot run here (no /dev/kvm, QEMU
missing or failing) is reported with the reason and skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Optional

from guest_bench import REPO, command, time_run, unavailable

sys.path.insert(0, str(REPO / "tests"))

from guests.build import build_all  # noqa: E402  (needs the path above)

MACHINES = ("xvm-kvm", "xvm-bt", "qemu-kvm", "qemu-tcg")
DEFAULT_MACHINES = ("xvm-kvm", "qemu-kvm", "qemu-tcg")


def measure(machine: str, kernel: Path, count: int, repeat: int, timeout: float) -> tuple[float, float]:
    """Median seconds for count=0 and count=N."""
    medians = []
    for n in (0, count):
        argv = command(machine, kernel, f"count={n}", timeout)
        runs = [time_run(argv, timeout, lambda stdout: "PASS pio_loop.count" in stdout) for _ in range(repeat)]
        medians.append(statistics.median(seconds for seconds, _ in runs))
    return medians[0], medians[1]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="OUTs per run (default 1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; the median counts (default 3)")
    parser.add_argument("--machines", default=",".join(DEFAULT_MACHINES),
                        help=f"comma-separated, from {', '.join(MACHINES)} (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (default 600)")
    args = parser.parse_args(argv)
    machines = [name.strip() for name in args.machines.split(",") if name.strip()]
    bad = [name for name in machines if name not in MACHINES]
    if bad or args.count < 1 or args.repeat < 1:
        parser.error(f"unknown machine(s) {', '.join(bad)}" if bad else "--count and --repeat must be positive")

    kernel = build_all(["pio_loop"])["pio_loop"]
    print(f"pio_loop guest, {args.count} OUTs to port 0x80, median of {args.repeat} runs\n")
    print(f"{'machine':<10} {'boot+exit (s)':>14} {'with OUTs (s)':>14} {'per OUT (us)':>13} {'OUTs/s':>12}")
    results: dict[str, float] = {}
    for machine in machines:
        reason = unavailable(machine)
        if reason is None:
            try:
                base, loaded = measure(machine, kernel, args.count, args.repeat, args.timeout)
            except RuntimeError as error:
                reason = str(error)
        if reason is not None:
            print(f"{machine:<10} skipped: {reason}")
            continue
        per_out = (loaded - base) / args.count
        results[machine] = per_out
        rate = f"{1 / per_out:12.0f}" if per_out > 0 else f"{'-':>12}"
        print(f"{machine:<10} {base:14.3f} {loaded:14.3f} {per_out * 1e6:13.3f} {rate}")
    if "xvm-kvm" in results and "qemu-kvm" in results and results["qemu-kvm"] > 0:
        print(f"\nxvm-kvm / qemu-kvm per OUT: {results['xvm-kvm'] / results['qemu-kvm']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
