"""Shared fixtures: the test guests, KVM availability, and `xvm`/QEMU subprocess runners.

Boot tests run the VMM in a subprocess (as a user would), with a timeout, and
look at its exit status, stdout (the guest's COM1) and stderr. Model:
Firecracker tests/conftest.py (`microvm_factory`).

This file puts tests/ on sys.path, so test modules import the guest table as
`from guests.build import GUESTS` however pytest was started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from guests.build import GuestBuildError, build_all  # noqa: E402  (needs the path above)

KVM_DEVICE = "/dev/kvm"


@dataclass(frozen=True)
class ProcessResult:
    """How a VMM process ended."""

    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """Everything a failing assertion should show."""
        return f"exit status {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def kvm_unavailable_reason() -> Optional[str]:
    """Why the kvm engine cannot run here, or None when /dev/kvm is usable."""
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} does not exist: this host has no KVM"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not readable and writable by this user (add yourself to the kvm group)"
    return None


def run_process(command: list[str], timeout: float) -> ProcessResult:
    """Run a command to completion; a hang fails the test with the output so far."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(
            command, cwd=REPO, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"{' '.join(command)} did not finish within {timeout:g} s\n"
            f"--- stdout ---\n{_text(expired.stdout)}\n--- stderr ---\n{_text(expired.stderr)}"
        )
    return ProcessResult(completed.returncode, completed.stdout, completed.stderr)


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return str(data or "")


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Every test guest, built once per session: name -> ELF path."""
    missing = [tool for tool in ("nasm", "ld") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot build the test guests: {' and '.join(missing)} not installed")
    try:
        return build_all()
    except GuestBuildError as error:
        pytest.fail(f"building the test guests failed: {error}")


@pytest.fixture(scope="session")
def kvm_available() -> None:
    """Skip (with the reason) when /dev/kvm is missing or not permitted."""
    reason = kvm_unavailable_reason()
    if reason:
        pytest.skip(reason)


def run_xvm(*args: str, timeout: float = 60.0) -> ProcessResult:
    """Run `python -m xvm ARGS` from the checkout."""
    return run_process([sys.executable, "-m", "xvm", *args], timeout)


@pytest.fixture
def xvm() -> Callable[..., ProcessResult]:
    """`xvm(*args, timeout=60)` runs `python -m xvm ARGS` and returns a ProcessResult."""
    return run_xvm


@pytest.fixture(scope="session")
def xvm_session() -> Callable[..., ProcessResult]:
    """The `xvm` runner for session-scoped fixtures."""
    return run_xvm


@pytest.fixture(scope="session")
def qemu() -> Callable[..., ProcessResult]:
    """`qemu(kernel, cmdline, cpus)` boots a multiboot kernel under QEMU TCG, the reference machine.

    QEMU's isa-debug-exit makes the status (v << 1) | 1; -no-reboot turns a
    triple fault into a clean exit with status 0.
    """
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("qemu-system-x86_64 not installed: the reference runs of the test guests need it")

    def run(kernel: Path, cmdline: str = "", cpus: int = 1, timeout: float = 30.0) -> ProcessResult:
        return run_process(
            [binary, "-M", "pc", "-accel", "tcg", "-smp", str(cpus), "-m", "64", "-kernel", str(kernel),
             "-append", cmdline,
             "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=4"],
            timeout,
        )

    return run
