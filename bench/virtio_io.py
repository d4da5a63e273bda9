"""virtio-blk and virtio-net throughput: xvm against QEMU on the same kernel, disk and acceleration.

Both VMMs boot the default guest kernel with root on a fresh ext4 image
(xvm/images/rootfs.py) and a raw scratch disk as vdb, on virtio-blk-pci and
virtio-net-pci, each on its own TAP in a network namespace this script makes
(so it needs root). The guest then measures, with busybox only:

* sequential write and read of the scratch disk, `dd bs=1M oflag/iflag=direct`
  (dd reports MB/s);
* 4 KiB O_DIRECT reads at queue depth 1 (`dd bs=4k iflag=direct`): requests
  per second; sequential offsets, as there is no fio in the image, so it is a
  latency figure, not random IOPS;
* guest-to-host network throughput: `wget` of a file from an HTTP server in
  the namespace, timed by the guest.

bt runs against `qemu -accel tcg`, kvm against `-enable-kvm`. The guest
clock must be real for the figures to mean anything, so xvm runs with
`--clock host`.

    sudo python bench/virtio_io.py --engine bt [--size 64] [--net-size 32]

Prints each figure for both VMMs and the ratio xvm/QEMU.
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

from xvm.images import command_cmdline, default_guest  # noqa: E402
from xvm.images.rootfs import build_rootfs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NETNS = f"xvmbench{os.getpid()}"
HOST_IP, GUEST_IP = "198.51.100.1", "198.51.100.2"
HTTP_PORT = 8080
APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 reboot=t init=/init"


def guest_script(size_mib: int, net_mib: int) -> str:
    """What the guest runs; every figure is printed on a line starting with BENCH."""
    return "; ".join([
        f"dd if=/dev/zero of=/dev/vdb bs=1M count={size_mib} oflag=direct 2>&1 | tail -1 | sed 's/^/BENCH write /'",
        f"dd if=/dev/vdb of=/dev/null bs=1M count={size_mib} iflag=direct 2>&1 | tail -1 | sed 's/^/BENCH read /'",
        f"dd if=/dev/vdb of=/dev/null bs=4k count={size_mib * 64} iflag=direct 2>&1 | tail -1"
        " | sed 's/^/BENCH qd1 /'",
        f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0; ping -c 1 -W 5 {HOST_IP} >/dev/null",
        "t0=$(date +%s%N)",
        f"wget -q -O /dev/null http://{HOST_IP}:{HTTP_PORT}/blob",
        "t1=$(date +%s%N)",
        f"echo BENCH net {net_mib} MiB $(( (t1 - t0) / 1000000 )) ms",
    ])


def parse(output: str) -> dict:
    """Figures from the BENCH lines: MB/s for write/read/net, requests/s for qd1."""
    figures = {}
    for kind in ("write", "read", "qd1"):
        match = re.search(rf"BENCH {kind} (\d+) bytes .*copied, ([\d.]+) seconds", output)
        if match:
            nbytes, seconds = int(match.group(1)), float(match.group(2))
            if seconds > 0:
                figures[kind] = nbytes / 4096 / seconds if kind == "qd1" else nbytes / 1e6 / seconds
    match = re.search(r"BENCH net (\d+) MiB (\d+) ms", output)
    if match and int(match.group(2)) > 0:
        figures["net"] = int(match.group(1)) * 1.048576 / (int(match.group(2)) / 1000)
    return figures


def sh(*command: str) -> None:
    subprocess.run(command, check=True)


def in_ns(*command: str) -> list:
    return ["ip", "netns", "exec", NETNS, *command]


def make_tap(name: str) -> None:
    sh(*in_ns("ip", "tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"))
    sh(*in_ns("ip", "addr", "add", f"{HOST_IP}/24", "dev", name))
    sh(*in_ns("ip", "link", "set", name, "up"))


def run_xvm(engine: str, kernel: Path, root: Path, scratch: Path, script: str, timeout: float) -> str:
    python = shutil.which("pypy3") if engine == "bt" else sys.executable
    make_tap("xvmb0")
    try:
        command = in_ns(python or sys.executable, "-m", "xvm", "run", "--engine", engine, "--clock", "host",
                        "--timeout", str(timeout), "--kernel", str(kernel), "--disk", str(root),
                        "--disk", f"{scratch},cache=none", "--net", "tap=xvmb0", "--append", APPEND,
                        "--", "sh", "-c", script)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run(command, capture_output=True, text=True, errors="replace", env=env,
                              timeout=timeout + 60).stdout
    finally:
        subprocess.run(in_ns("ip", "link", "del", "xvmb0"), check=False)


def run_qemu(engine: str, kernel: Path, root: Path, scratch: Path, script: str, timeout: float) -> str:
    make_tap("qemub0")
    accel = ["-enable-kvm", "-cpu", "host"] if engine == "kvm" else ["-accel", "tcg"]
    try:
        command = in_ns(
            "qemu-system-x86_64", *accel, "-M", "pc", "-m", "256", "-nodefaults", "-display", "none",
            "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", str(kernel), "-append", f"{APPEND} {command_cmdline(['sh', '-c', script])}",
            "-drive", f"file={root},if=none,id=root,format=raw,cache=writeback",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={scratch},if=none,id=scratch,format=raw,cache=none",
            "-device", "virtio-blk-pci,drive=scratch",
            "-netdev", "tap,id=net0,ifname=qemub0,script=no,downscript=no,vhost=off",
            "-device", "virtio-net-pci,netdev=net0",
        )
        return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout).stdout
    finally:
        subprocess.run(in_ns("ip", "link", "del", "qemub0"), check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("bt", "kvm"), default="kvm")
    parser.add_argument("--size", type=int, default=64, help="MiB moved by each disk test (default 64)")
    parser.add_argument("--net-size", type=int, default=32, help="MiB downloaded by the network test")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per VM run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("virtio_io: needs root (network namespace and TAP devices)", file=sys.stderr)
        return 2
    kernel = default_guest(build=True).kernel
    script = guest_script(args.size, args.net_size)
    results = {}
    with tempfile.TemporaryDirectory(prefix="xvm-bench-") as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        with open(work / "www" / "blob", "wb") as blob:
            blob.truncate(args.net_size << 20)
        sh("ip", "netns", "add", NETNS)
        server = subprocess.Popen(in_ns(sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", HOST_IP,
                                        "--directory", str(work / "www")),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sh(*in_ns("ip", "link", "set", "lo", "up"))
            for name, runner in (("qemu", run_qemu), ("xvm", run_xvm)):
                root = build_rootfs(work / f"{name}-root.img", size_mib=64)
                scratch = work / f"{name}-scratch.img"
                with open(scratch, "wb") as disk:
                    disk.truncate(args.size << 20)
                started = time.monotonic()
                output = runner(args.engine, kernel, root, scratch, script, args.timeout)
                results[name] = parse(output)
                print(f"{name}: {time.monotonic() - started:.0f} s, {results[name]}", file=sys.stderr)
                if not results[name]:
                    print(f"{name}: no figures; the end of its output:\n{output[-2000:]}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
    units = {"write": "MB/s", "read": "MB/s", "qd1": "req/s", "net": "MB/s"}
    print(f"virtio I/O, engine {args.engine} (QEMU: {'-enable-kvm' if args.engine == 'kvm' else 'tcg'})")
    print(f"{'test':<8}{'xvm':>12}{'qemu':>12}{'xvm/qemu':>10}")
    for key, unit in units.items():
        ours, theirs = results.get("xvm", {}).get(key), results.get("qemu", {}).get(key)
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
        print(f"{key:<8}{ours or 0:>9.1f} {unit:<3}{theirs or 0:>8.1f} {unit:<3}{ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
