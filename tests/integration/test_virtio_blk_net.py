"""Linux on virtio-blk and virtio-net: root disk, sync durability, read-only disks, TAP and passt networking.

Each test boots the default guest kernel in an `xvm run` subprocess and looks
at the result from the host: the disk image (through e2fsck + debugfs, never
a mount), a raw TAP in a network namespace the test makes, an HTTP server the
test runs. Linux user space only runs on the bt engine on PVM hosts (GUEST.md),
so the Linux-level checks use bt (under PyPy when installed) and the root-disk
boot also runs on kvm.

Whether the default guest boots at all is probed once per engine (`xvm run --
true`); when that probe fails, the tests that need a boot are marked xfail
with the probe's output, so they turn green by themselves once boots work,
and a failure that is ours (a boot that works but a disk that does not) stays
a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from xvm.images import default_guest
from xvm.images.rootfs import build_rootfs

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = {"bt": 300.0, "kvm": 300.0}
DISK_APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 reboot=t init=/init"
# Guest-side address plan of the TAP test (RFC 5737 documentation range).
TAP_HOST, TAP_GUEST = "198.51.100.1", "198.51.100.2"

pytestmark = pytest.mark.linux


def python_for(engine: str) -> str:
    """bt runs under PyPy when it is installed (its JIT is the software engine's speed path)."""
    if engine == "bt":
        return shutil.which("pypy3") or sys.executable
    return sys.executable


def xvm_command(engine: str, *args: str) -> list:
    timeout = BOOT_TIMEOUT[engine]
    return [python_for(engine), "-m", "xvm", "run", "--engine", engine, "--timeout", str(timeout), *args]


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run(command: list, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=REPO, env=environment(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{' '.join(command[:8])} ... did not finish in {timeout:g} s\n--- stdout ---\n"
                    f"{expired.stdout}\n--- stderr ---\n{expired.stderr}")


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


@pytest.fixture(scope="session")
def kernel() -> Path:
    """The default guest's bzImage, built on first use like `xvm run` does."""
    return default_guest(build=True).kernel


_probes: dict = {}


def require_boot(engine: str) -> None:
    """xfail the calling test when the default guest does not boot on `engine` on this host."""
    if engine == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not permitted on this host")
    if engine not in _probes:
        result = run(xvm_command(engine, "--", "echo", "xvm-probe-ok"), BOOT_TIMEOUT[engine] + 60)
        _probes[engine] = "" if "xvm-probe-ok" in result.stdout else describe(result)[-1500:]
    if _probes[engine]:
        pytest.xfail(f"the default guest does not boot on {engine} on this host yet:\n{_probes[engine]}")


def guest_file(image: Path, path: str) -> Optional[bytes]:
    """A file's bytes from an ext4 image, after replaying its journal (as the next mount would)."""
    check = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
    assert check.returncode in (0, 1), check.stdout + check.stderr  # 1: fixed (journal replayed)
    out = image.with_suffix(".extract")
    if out.exists():
        out.unlink()
    subprocess.run(["debugfs", "-R", f"dump {path} {out}", str(image)], capture_output=True, check=True)
    return out.read_bytes() if out.exists() else None


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return build_rootfs(tmp_path / "rootfs.img", size_mib=32)


# --- virtio-blk -----------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["bt", "kvm"])
def test_root_on_virtio_blk_write_sync_and_read_back(engine, kernel, rootfs):
    require_boot(engine)
    script = "echo xvm-proof-$((6*7)) > /root/proof.txt && sync && grep ' / ' /proc/mounts"
    result = run(xvm_command(engine, "--kernel", str(kernel), "--disk", str(rootfs), "--append", DISK_APPEND,
                             "--", "sh", "-c", script), BOOT_TIMEOUT[engine] + 60)
    assert result.returncode == 0, describe(result)
    assert "/dev/vda / ext4 rw" in result.stdout, describe(result)
    assert guest_file(rootfs, "/root/proof.txt") == b"xvm-proof-42\n"


def test_sigkill_after_guest_sync_loses_nothing(kernel, rootfs):
    require_boot("bt")
    script = ("dd if=/dev/urandom of=/root/blob bs=4096 count=64 2>/dev/null && md5sum /root/blob > /root/blob.md5"
              " && sync && echo XVM-SYNCED && sleep 600")
    command = xvm_command("bt", "--kernel", str(kernel), "--disk", f"{rootfs},cache=writeback", "--append",
                          DISK_APPEND, "--", "sh", "-c", script)
    process = subprocess.Popen(command, cwd=REPO, env=environment(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list = []
    synced = threading.Event()

    def reader():
        for line in process.stdout:
            lines.append(line)
            if "XVM-SYNCED" in line:
                synced.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        assert synced.wait(BOOT_TIMEOUT["bt"]), "".join(lines)[-3000:]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    blob = guest_file(rootfs, "/root/blob")
    digest = guest_file(rootfs, "/root/blob.md5")
    assert blob is not None and digest is not None, "".join(lines)[-3000:]
    assert len(blob) == 64 * 4096
    assert digest.split()[0].decode() == hashlib.md5(blob).hexdigest()


def test_read_only_disk_cannot_be_written(kernel, rootfs, tmp_path):
    require_boot("bt")
    data = tmp_path / "data.img"
    data.write_bytes(b"\x5a" * (1 << 20))
    script = ("cat /sys/block/vdb/ro; dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null;"
              " echo write-status=$?; dd if=/dev/vdb bs=4096 count=1 2>/dev/null | md5sum")
    result = run(xvm_command("bt", "--kernel", str(kernel), "--disk", f"{rootfs},ro", "--disk", f"{data},ro",
                             "--append", DISK_APPEND.replace(" rw ", " ro "), "--", "sh", "-c", script),
                 BOOT_TIMEOUT["bt"] + 60)
    assert result.returncode == 0, describe(result)
    assert "write-status=0" not in result.stdout, describe(result)
    assert hashlib.md5(b"\x5a" * 4096).hexdigest() in result.stdout, describe(result)
    assert data.read_bytes() == b"\x5a" * (1 << 20)


# --- virtio-net (on the default initramfs guest: no disk needed) ---------------------------------
class HttpServer:
    """`python -m http.server` serving one file, optionally inside a network namespace."""

    def __init__(self, directory: Path, address: str, netns: Optional[str] = None) -> None:
        self.port = _free_port() if netns is None else 8080
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.process = subprocess.Popen(
            prefix + [sys.executable, "-m", "http.server", str(self.port), "--bind", address,
                      "--directory", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path: Path) -> Path:
    directory = tmp_path / "www"
    directory.mkdir()
    (directory / "hello.txt").write_text("hello from the host\n")
    return directory


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("the TAP test needs root to make a network namespace and a TAP device")
    name = f"xvmnet{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_tap_networking_in_a_namespace(netns, served):
    require_boot("bt")
    tap = "xvmtap9"
    for command in (["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                    ["ip", "addr", "add", f"{TAP_HOST}/24", "dev", tap],
                    ["ip", "link", "set", tap, "up"], ["ip", "link", "set", "lo", "up"]):
        subprocess.run(["ip", "netns", "exec", netns] + command, check=True)
    server = HttpServer(served, TAP_HOST, netns)
    try:
        script = (f"ip link set eth0 up && ip addr add {TAP_GUEST}/24 dev eth0 && ping -c 1 -W 5 {TAP_HOST}"
                  f" && wget -q -O - http://{TAP_HOST}:{server.port}/hello.txt")
        command = ["ip", "netns", "exec", netns] + xvm_command(
            "bt", "--net", f"tap={tap}", "--", "sh", "-c", script)
        result = run(command, BOOT_TIMEOUT["bt"] + 60)
    finally:
        server.close()
    assert result.returncode == 0, describe(result)
    assert "1 packets received" in result.stdout, describe(result)
    assert "hello from the host" in result.stdout, describe(result)


def test_user_networking_reaches_the_host_loopback(served):
    if shutil.which("passt") is None:
        pytest.fail("--net user needs passt: apt-get install passt (scripts/setup.sh should install it)")
    require_boot("bt")
    server = HttpServer(served, "127.0.0.1")
    # passt hands out the host's address by DHCP and maps the gateway to the host's loopback.
    dhcp_script = ('#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface'
                   ' && ip route add default via $router\nexit 0\n')
    script = (f"printf '%s' '{dhcp_script}' > /tmp/dhcp && chmod +x /tmp/dhcp && ip link set eth0 up"
              " && udhcpc -q -n -t 5 -i eth0 -s /tmp/dhcp >/dev/null"
              f" && wget -q -O - http://$(ip route | awk '/default/ {{print $3}}'):{server.port}/hello.txt")
    try:
        result = run(xvm_command("bt", "--net", "user", "--", "sh", "-c", script),
                     BOOT_TIMEOUT["bt"] + 60)
    finally:
        server.close()
    assert result.returncode == 0, describe(result)
    assert "hello from the host" in result.stdout, describe(result)
