"""virtio-blk and virtio-net throughput: xvm against QEMU on the same kernel, disk and acceleration.

Both VMMs boot the default guest kernel with root on a fresh ext4 image
(xvm/images/rootfs.py, with Debian's ioping added) and a raw scratch disk
as vdb, on virtio-blk-pci and virtio-net-pci, each on
its own TAP in a network namespace this script makes (so it needs root).
The guest then measures:

* sequential write and read of the scratch disk, `dd bs=1M oflag/iflag=direct`,
  timed with busybox `adjtimex` (microseconds);
* 4 KiB random reads, O_DIRECT, queue depth 1 over the whole scratch disk:
  Debian's `ioping -R -D` (IOPS);
* guest-to-host network throughput: `wget` of a file from an HTTP server in
  the namespace, timed the same way (the guest receives; "guest->host" in
  the sense of the guest fetching from the host over virtio-net and the TAP).

Both disks use cache=writeback on both VMMs (host page cache, the guest's
FLUSH is fsync): the guest's O_DIRECT keeps its own cache out, so the figures
are the VMMs' costs, not the host disk's. (xvm's cache=none is O_DSYNC, which
is QEMU's cache=writethrough, not QEMU's O_DIRECT cache=none.)

bt runs against `qemu -accel tcg`, kvm against `-enable-kvm`. The guest
clock must be real for the figures to mean anything, so xvm runs with
`--clock host`.

    sudo python bench/virtio_io.py --engine bt [--size 64] [--net-size 32]

Prints each figure for both VMMs and the ratio xvm/QEMU; a VMM that did not
boot or finish shows no figures, and the end of its output goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xvm.arch.x86 import cpuid as cpuid_table  # noqa: E402
from xvm.engines.kvm import host  # noqa: E402
from xvm.images import command_cmdline, default_guest  # noqa: E402
from xvm.images.guest_programs import IOPING, LSPCI  # noqa: E402
from xvm.images.rootfs import build_rootfs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NETNS = f"xvmbench{os.getpid()}"
HOST_IP, GUEST_IP = "198.51.100.1", "198.51.100.2"
HTTP_PORT = 8080
APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 reboot=t init=/init"
UNITS = {"write": "MB/s", "read": "MB/s", "randread": "IOPS", "net": "MB/s"}


def guest_script(size_mib: int, net_mib: int, random_seconds: int) -> str:
    """What the guest runs; every figure is printed on a line starting with BENCH."""

    def timed(kind: str, command: str) -> str:
        # busybox's adjtimex prints the clock in microseconds (its dd prints no rate, its time 10 ms steps).
        return f"t0=$(now); {command} >/dev/null 2>&1; t1=$(now); echo BENCH {kind} $((t1 - t0))"

    return "; ".join(
        [
            "now() { adjtimex | awk '/tv_sec/ {s = $2} /tv_usec/ {u = $2} END {printf \"%d%06d\\n\", s, u}'; }",
            timed("write", f"dd if=/dev/zero of=/dev/vdb bs=1M count={size_mib} oflag=direct"),
            timed("read", f"dd if=/dev/vdb of=/dev/null bs=1M count={size_mib} iflag=direct"),
            # -C: no fadvise(DONTNEED), which a block device refuses; -D bypasses the cache anyway.
            f"ioping -B -R -D -C -s 4k -S {size_mib}M -w {random_seconds} /dev/vdb | sed 's/^/BENCH randread /'",
            f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0; ping -c 1 -W 5 {HOST_IP} >/dev/null",
            timed("net", f"wget -q -O /dev/null http://{HOST_IP}:{HTTP_PORT}/blob"),
        ]
    )


def parse(output: str, size_mib: int, net_mib: int) -> dict:
    """Figures from the BENCH lines: MB/s for write/read/net (times in microseconds), IOPS for randread."""
    figures = {}
    for kind, mib in (("write", size_mib), ("read", size_mib), ("net", net_mib)):
        match = re.search(rf"^BENCH {kind} (\d+)\s*$", output, re.MULTILINE)
        if match and int(match.group(1)) > 0:
            figures[kind] = mib * 1.048576 / (int(match.group(1)) / 1e6)
    # ioping -B: requests, time (ns), iops, bytes/s, min, avg, max, mdev (ns), ...
    match = re.search(r"^BENCH randread \d+ \d+ (\d+) ", output, re.MULTILINE)
    if match:
        figures["randread"] = float(match.group(1))
    return figures


def sh(*command: str) -> None:
    subprocess.run(command, check=True)


def in_ns(*command: str) -> list:
    return ["ip", "netns", "exec", NETNS, *command]


def make_tap(name: str) -> None:
    sh(*in_ns("ip", "tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"))
    sh(*in_ns("ip", "addr", "add", f"{HOST_IP}/24", "dev", name))
    sh(*in_ns("ip", "link", "set", name, "up"))


def run_vm(tap: str, command: list, timeout: float) -> str:
    """Run one VMM on its own TAP; its console output, also when it had to be killed at `timeout`."""
    make_tap(tap)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        try:
            return subprocess.run(
                in_ns(*command), capture_output=True, text=True, errors="replace", env=env, timeout=timeout
            ).stdout
        except subprocess.TimeoutExpired as expired:
            partial = expired.stdout or b""
            text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            return f"{text}\n[killed after {timeout:g} s]"
    finally:
        subprocess.run(in_ns("ip", "link", "del", tap), check=False)


def xvm_command(engine: str, kernel: Path, root: Path, scratch: Path, script: str, timeout: float) -> list:
    python = (shutil.which("pypy3") if engine == "bt" else None) or sys.executable
    return [
        python, "-m", "xvm", "run", "--engine", engine, "--clock", "host", "--timeout", str(timeout),
        "--kernel", str(kernel), "--disk", str(root), "--disk", f"{scratch},cache=writeback",
        "--net", "tap=xvmb0", "--append", APPEND, "--", "sh", "-c", script,
    ]  # fmt: skip


def qemu_command(engine: str, kernel: Path, root: Path, scratch: Path, script: str, timeout: float) -> list:
    append = f"{APPEND} {command_cmdline(['sh', '-c', script])}"
    accel = ["-accel", "tcg"]
    if engine == "kvm":
        accel = ["-enable-kvm", "-cpu", "qemu64,+xsaveerptr"]  # as bench/boot.py
        if host.detect_backend() == "pvm":  # the guest setup xvm gives a PVM guest (KvmVm.linux_cmdline_hints)
            append += " " + cpuid_table.linux_clearcpuid(cpuid_table.PVM_MASKED_FEATURES)
    return [
        "qemu-system-x86_64", *accel, "-M", "pc", "-m", "256", "-nodefaults", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel", str(kernel), "-append", append,
        "-drive", f"file={root},if=none,id=root,format=raw,cache=writeback",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"file={scratch},if=none,id=scratch,format=raw,cache=writeback",
        "-device", "virtio-blk-pci,drive=scratch",
        "-netdev", "tap,id=net0,ifname=qemub0,script=no,downscript=no,vhost=off",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("bt", "kvm"), default="kvm")
    parser.add_argument("--size", type=int, default=64, help="MiB moved by each disk test (default 64)")
    parser.add_argument("--net-size", type=int, default=32, help="MiB downloaded by the network test")
    parser.add_argument("--random-seconds", type=int, default=5, help="length of the random-read test")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per VM run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("virtio_io: needs root (network namespace and TAP devices): run it with sudo", file=sys.stderr)
        return 2
    kernel = default_guest(build=True).kernel
    script = guest_script(args.size, args.net_size, args.random_seconds)
    results: dict = {}
    seconds: dict = {}
    with tempfile.TemporaryDirectory(prefix="xvm-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        with open(work / "www" / "blob", "wb") as blob:
            blob.truncate(args.net_size << 20)
        sh("ip", "netns", "add", NETNS)
        server = subprocess.Popen(
            in_ns(sys.executable, "-m", "http.server", str(HTTP_PORT), "--directory", str(work / "www")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sh(*in_ns("ip", "link", "set", "lo", "up"))
            for name, tap, build in (("qemu", "qemub0", qemu_command), ("xvm", "xvmb0", xvm_command)):
                root = build_rootfs(work / f"{name}-root.img", programs=(LSPCI, IOPING))
                scratch = work / f"{name}-scratch.img"
                with open(scratch, "wb") as disk:
                    disk.truncate(args.size << 20)
                started = time.monotonic()
                output = run_vm(tap, build(args.engine, kernel, root, scratch, script, args.timeout), args.timeout + 60)
                seconds[name] = time.monotonic() - started
                results[name] = parse(output, args.size, args.net_size)
                if len(results[name]) < len(UNITS):
                    print(f"{name}: figures missing; the end of its output:\n{output[-3000:]}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
    qemu_accel = "-enable-kvm" if args.engine == "kvm" else "-accel tcg"
    print(
        f"virtio I/O, xvm --engine {args.engine} vs QEMU {qemu_accel}; disk {args.size} MiB, net {args.net_size} MiB,"
        f" random reads {args.random_seconds} s"
    )
    print(f"{'test':<10}{'xvm':>14}{'qemu':>14}{'xvm/qemu':>10}")
    for key, unit in UNITS.items():
        ours, theirs = results["xvm"].get(key), results["qemu"].get(key)
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
        mine = f"{ours:.1f} {unit}" if ours else "-"
        peer = f"{theirs:.1f} {unit}" if theirs else "-"
        print(f"{key:<10}{mine:>14}{peer:>14}{ratio:>10}")
    for name in ("xvm", "qemu"):
        note = "" if results[name] else "  (no figures: did not boot or finish, see stderr)"
        print(f"{name} run: {seconds[name]:.0f} s wall{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
