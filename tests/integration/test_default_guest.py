"""The default Linux guest (minimal kernel + busybox initramfs) runs a command and carries its status out.

Linux boots are expensive on hosts whose /dev/kvm is PVM (guest kernel code is
emulated: minutes per boot under load), so the kvm engine gets ONE boot that
checks several things at once: the command's output streams out, `nproc` sees
every vCPU, and xvm exits with the command's status.
"""

from __future__ import annotations

import pytest

#: Generous: a boot on a loaded PVM host has taken close to six minutes.
LINUX_BOOT_TIMEOUT = 900


@pytest.mark.linux
def test_kvm_runs_a_command_on_two_cpus_and_returns_its_status(kvm_available, xvm):
    result = xvm("run", "--engine", "kvm", "--cpus", "2", "--", "sh", "-c", "echo hello; nproc; exit 7",
                 timeout=LINUX_BOOT_TIMEOUT)
    lines = result.stdout.splitlines()
    assert "hello" in lines, result.describe()
    assert lines[lines.index("hello") + 1] == "2", result.describe()
    assert result.returncode == 7, result.describe()
    assert "Traceback" not in result.stderr


@pytest.mark.linux
def test_bt_boots_the_default_guest_and_returns_the_command_status(xvm):
    """The software engine needs no /dev/kvm: it always runs (under PyPy when installed)."""
    result = xvm("run", "--engine", "bt", "--", "sh", "-c", "echo hi from bt; exit 3", timeout=LINUX_BOOT_TIMEOUT)
    assert "hi from bt" in result.stdout.splitlines(), result.describe()
    assert result.returncode == 3, result.describe()
    assert "Traceback" not in result.stderr
