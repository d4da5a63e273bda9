"""Linux on virtio-blk and virtio-net: root disk, sync durability, read-only disks, TAP and passt networking.

Each scenario boots the default guest kernel once in an `xvm run` subprocess
and looks at the result from the host: the disk image (through e2fsck +
debugfs, never a mount), a TAP in a network namespace the test makes, an HTTP
server the test runs. On PVM hosts Linux user space is only dependable on the
bt engine (GUEST.md), so the Linux-level checks use bt (under PyPy when
installed) and the root-disk boot also runs on kvm. A bt boot takes minutes
on a loaded 2-core machine, hence one boot per scenario, shared by the tests
that look at it.

`check_boot` marks a test xfail only when the guest did not reach user space
for reasons that are not ours (the kernel stopped before the disk or the
network mattered), so these tests turn green by themselves as boots improve,
and a disk that does not mount or answer stays a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
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
BOOT_TIMEOUT = {"bt": 480.0, "kvm": 480.0}
DISK_APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 reboot=t init=/init"
#: Printed first by every guest command: user space runs.
USERSPACE = "XVM-USERSPACE-OK"
# Guest-side address plan of the TAP test (RFC 5737 documentation range).
TAP_HOST, TAP_GUEST = "198.51.100.1", "198.51.100.2"

pytestmark = pytest.mark.linux


def python_for(engine: str) -> str:
    """bt runs under PyPy when it is installed (its JIT is the software engine's speed path)."""
    if engine == "bt":
        return shutil.which("pypy3") or sys.executable
    return sys.executable


def xvm_command(engine: str, *args: str, script: str) -> list:
    """`xvm run` on `engine` with `args`, running `script` in the guest after the USERSPACE marker."""
    if engine == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not permitted on this host")
    return [python_for(engine), "-m", "xvm", "run", "--engine", engine, "--timeout", str(BOOT_TIMEOUT[engine]),
            *args, "--", "sh", "-c", f"echo {USERSPACE}; {script}"]


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


def check_boot(result: subprocess.CompletedProcess, engine: str, disk_root: bool = False) -> None:
    """xfail when the guest never reached user space for a reason that is not a virtio device's."""
    text = result.stdout
    if USERSPACE in text:
        return
    if disk_root and ("VFS: Cannot open root device" in text or "VFS: Unable to mount root" in text
                      or ("[vda]" in text and "EXT4-fs (vda): mounted" not in text)):
        return  # the kernel found no usable root disk: that is ours, let the assertions fail
    pytest.xfail(f"the default guest did not reach user space on {engine} on this host:\n{describe(result)[-2000:]}")


@pytest.fixture(scope="module")
def guest():
    """The default guest's kernel and initramfs, built once here so no boot starts a build."""
    return default_guest(build=True)


@pytest.fixture(scope="module")
def kernel(guest) -> Path:
    return guest.kernel


def guest_file(image: Path, path: str) -> Optional[bytes]:
    """A file's bytes from an ext4 image, after replaying its journal (as the next mount would)."""
    check = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
    assert check.returncode in (0, 1), check.stdout + check.stderr  # 1: fixed (journal replayed)
    out = image.with_suffix(".extract")
    if out.exists():
        out.unlink()
    subprocess.run(["debugfs", "-R", f"dump {path} {out}", str(image)], capture_output=True, check=True)
    return out.read_bytes() if out.exists() else None


# --- virtio-blk -----------------------------------------------------------------------------------
class DiskBoot:
    """One boot with root on a read-write vda and a read-only data disk vdb."""

    DATA = b"\x5a" * (1 << 20)
    SCRIPT = ("echo xvm-proof-$((6*7)) > /root/proof.txt && sync && grep ' / ' /proc/mounts;"
              " cat /sys/block/vdb/ro; dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null;"
              " echo vdb-write-status=$?; dd if=/dev/vdb bs=4096 count=1 2>/dev/null | md5sum;"
              " grep virtio /proc/interrupts; lspci 2>&1")

    def __init__(self, engine: str, kernel: Path, directory: Path) -> None:
        self.engine = engine
        self.root = build_rootfs(directory / "rootfs.img", size_mib=32)
        self.data = directory / "data.img"
        self.data.write_bytes(self.DATA)
        self.result = run(xvm_command(engine, "--kernel", str(kernel), "--disk", str(self.root),
                                      "--disk", f"{self.data},ro", "--append", DISK_APPEND, script=self.SCRIPT),
                          BOOT_TIMEOUT[engine] + 60)


@pytest.fixture(scope="module", params=["bt", "kvm"])
def disk_boot(request, kernel, tmp_path_factory) -> DiskBoot:
    """One disk boot per engine, shared by the tests that look at it."""
    return DiskBoot(request.param, kernel, tmp_path_factory.mktemp(f"disk-{request.param}"))


def test_root_on_virtio_blk_write_sync_and_read_back(disk_boot):
    result = disk_boot.result
    check_boot(result, disk_boot.engine, disk_root=True)
    assert result.returncode == 0, describe(result)
    assert " / ext4 rw" in result.stdout, describe(result)
    assert guest_file(disk_boot.root, "/root/proof.txt") == b"xvm-proof-42\n"


def test_read_only_disk_cannot_be_written(disk_boot):
    result = disk_boot.result
    check_boot(result, disk_boot.engine, disk_root=True)
    lines = result.stdout.splitlines()
    assert "1" in lines, describe(result)  # /sys/block/vdb/ro
    assert "vdb-write-status=0" not in result.stdout, describe(result)
    assert hashlib.md5(DiskBoot.DATA[:4096]).hexdigest() in result.stdout, describe(result)
    assert disk_boot.data.read_bytes() == DiskBoot.DATA


def test_virtio_pci_interrupts_are_msix(disk_boot):
    """Linux's virtio_pci takes one MSI-X vector for configuration changes and one per queue."""
    result = disk_boot.result
    check_boot(result, disk_boot.engine, disk_root=True)
    for name in ("input", "config", "req.0"):  # virtio-rng's queue, any device's config, virtio-blk's queue
        assert re.search(rf"^\s*\d+:\s+\d+\s+PCI-MSI\s.*\svirtio\d+-{re.escape(name)}$", result.stdout,
                         re.MULTILINE), describe(result)
    # Every root-disk request completed with an MSI-X interrupt: the vda queue's count is not zero.
    counts = re.findall(r"^\s*\d+:\s+(\d+)\s+PCI-MSI\s.*-req\.0$", result.stdout, re.MULTILINE)
    assert counts and max(int(count) for count in counts) > 0, describe(result)


def test_lspci_on_the_root_disk_lists_the_virtio_devices(disk_boot):
    """`xvm images rootfs` puts Debian's lspci (and its libraries) on the disk; busybox has none."""
    result = disk_boot.result
    check_boot(result, disk_boot.engine, disk_root=True)
    assert "00:00.0 Host bridge: Intel Corporation 440FX" in result.stdout, describe(result)
    assert "Red Hat, Inc. Virtio 1.0 RNG" in result.stdout, describe(result)
    assert result.stdout.count("Red Hat, Inc. Virtio 1.0 block device") == 2, describe(result)


def test_sigkill_after_guest_sync_loses_nothing(kernel, tmp_path):
    rootfs = build_rootfs(tmp_path / "rootfs.img", size_mib=32)
    script = ("dd if=/dev/urandom of=/root/blob bs=4096 count=64 2>/dev/null && md5sum /root/blob > /root/blob.md5"
              " && sync && echo XVM-SYNCED && sleep 600")
    command = xvm_command("bt", "--kernel", str(kernel), "--disk", f"{rootfs},cache=writeback", "--append",
                          DISK_APPEND, script=script)
    process = subprocess.Popen(command, cwd=REPO, env=environment(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list = []
    synced = threading.Event()

    def reader():
        for line in process.stdout:
            lines.append(line)
            if "XVM-SYNCED" in line:
                synced.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        synced.wait(BOOT_TIMEOUT["bt"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        thread.join(5)
    output = "".join(lines)
    if not synced.is_set():
        check_boot(subprocess.CompletedProcess(command, process.returncode, output, ""), "bt", disk_root=True)
        pytest.fail(f"the guest never reported its sync:\n{output[-3000:]}")
    blob = guest_file(rootfs, "/root/blob")
    digest = guest_file(rootfs, "/root/blob.md5")
    assert blob is not None and digest is not None, output[-3000:]
    assert len(blob) == 64 * 4096
    assert digest.split()[0].decode() == hashlib.md5(blob).hexdigest()


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


def test_tap_networking_in_a_namespace(guest, netns, served):
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
            "bt", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd), "--net", f"tap={tap}", script=script)
        result = run(command, BOOT_TIMEOUT["bt"] + 60)
    finally:
        server.close()
    check_boot(result, "bt")
    assert result.returncode == 0, describe(result)
    assert "1 packets received" in result.stdout, describe(result)
    assert "hello from the host" in result.stdout, describe(result)


def test_user_networking_reaches_the_host_loopback(guest, served):
    if shutil.which("passt") is None:
        pytest.fail("--net user needs passt: apt-get install passt (scripts/setup.sh should install it)")
    server = HttpServer(served, "127.0.0.1")
    # passt hands out the host's address by DHCP and maps the gateway to the host's loopback.
    dhcp_script = ('#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface'
                   ' && ip route add default via $router\nexit 0\n')
    script = (f"printf '%s' '{dhcp_script}' > /tmp/dhcp && chmod +x /tmp/dhcp && ip link set eth0 up"
              " && udhcpc -q -n -t 5 -i eth0 -s /tmp/dhcp >/dev/null"
              f" && wget -q -O - http://$(ip route | awk '/default/ {{print $3}}'):{server.port}/hello.txt")
    try:
        result = run(xvm_command("bt", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd), "--net", "user",
                                 script=script), BOOT_TIMEOUT["bt"] + 60)
    finally:
        server.close()
    check_boot(result, "bt")
    assert result.returncode == 0, describe(result)
    assert "hello from the host" in result.stdout, describe(result)
