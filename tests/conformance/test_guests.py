"""The test guests on both engines: one mixin, one test per guest.

Each test boots a guest with `xvm run --engine ENGINE --kernel GUEST.elf` and
checks the exact PASS lines the guest prints and its exit status (the value
it writes to port 0xF4, as (v << 1) | 1; 4 for the triple-fault guest). The
guests are first validated against QEMU in test_qemu_reference.py.
Model: py65 tests/devices/test_mpu6502.py (`Common6502Tests`).

A guest that an engine (or the host under it) cannot run yet is listed in
`known_failures` with the reason and the symptom: the test is reported as
xfail only after it has really failed with that symptom; it is never skipped.
"""

from __future__ import annotations

import os
import re
from typing import Callable, NamedTuple

import pytest
from conftest import ProcessResult
from guests.build import GUESTS

#: `xvm run` exits 4 when the guest triple-faults.
XVM_TRIPLE_FAULT_STATUS = 4


class KnownFailure(NamedTuple):
    """Why a guest fails on an engine, and the regex (on stdout + stderr) that identifies it."""

    reason: str
    symptom: str


def pvm_host() -> bool:
    """/dev/kvm is served by PVM (kvm_pvm): shadow paging and instruction emulation, no VT-x/AMD-V."""
    return os.path.isdir("/sys/module/kvm_pvm")


#: PVM's KVM runs paging only in long mode: CR0.PG=1 without EFER.LME (32-bit or PAE paging) is refused
#: with #GP, which the guest reports as unexpected (or, before it has an IDT, becomes a triple fault).
PVM_NO_32BIT_PAGING = KnownFailure(
    "PVM host: KVM refuses 32-bit paging (CR0.PG without EFER.LME); paging64 covers paging there",
    r"FAIL unexpected-exception vector=0000000d|triple fault",
)

#: Observed on PVM: SYSRET in guest ring 0 raises #GP(0) (GUEST.md: user-mode SYSCALL is broken there too).
PVM_SYSRET_GP = KnownFailure(
    "PVM host: SYSRET from guest ring 0 raises #GP(0)",
    r"FAIL unexpected-exception vector=0+d error=0+ rip=",
)


#: Observed on PVM: ring-3 code runs natively there, and INT n from ring 3 reaches the guest as #UD at the INT
#: (GUEST.md: user-mode SYSCALL and INT 0x80 alike); no VMM exit shows it. IRET to ring 3 itself works (fallback).
PVM_USER_INT_UD = KnownFailure(
    "PVM host: INT n executed in ring 3 arrives in the guest as #UD",
    r"FAIL unexpected-exception vector=00000006 ",
)


#: Seconds a guest may run (--timeout); the process gets 30 s more.
VM_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def guest_runs(guests, xvm_session) -> Callable[[str, str], tuple[ProcessResult, list[str]]]:
    """`guest_runs(engine, name)` -> (result, problems): each guest boots once per engine and session."""
    runs: dict[tuple[str, str], tuple[ProcessResult, list[str]]] = {}

    def run(engine: str, name: str) -> tuple[ProcessResult, list[str]]:
        if (engine, name) not in runs:
            guest = GUESTS[name]
            result = xvm_session(
                "run", "--engine", engine, "--kernel", str(guests[name]), "--append", guest.cmdline,
                "--mem", "64M", "--cpus", str(guest.cpus), "--timeout", f"{VM_TIMEOUT:g}", timeout=VM_TIMEOUT + 30,
            )
            problems = guest.problems(result.returncode, result.stdout, XVM_TRIPLE_FAULT_STATUS)
            if guest.exit_value is None and "triple fault" not in result.stderr:
                problems.append("stderr does not say 'triple fault'")
            if "Traceback" in result.stderr:
                problems.append("xvm printed a traceback")
            runs[engine, name] = (result, problems)
        return runs[engine, name]

    return run

class GuestConformance:
    """Every guest on one engine; subclasses set `engine`."""

    engine = ""
    #: guest name -> why this engine cannot run it yet, and how that shows.
    known_failures: dict[str, KnownFailure] = {}

    def run_guest(self, name: str, guest_runs) -> None:
        result, problems = guest_runs(self.engine, name)
        self.xfail_if_known(name, result, problems)
        assert not problems, "\n".join(problems) + "\n" + result.describe()

    @classmethod
    def xfail_if_known(cls, name: str, result: ProcessResult, problems: list[str]) -> None:
        """xfail when the run failed with the symptom of a known failure of this engine here."""
        known = cls.known_failures.get(name)
        if problems and known and re.search(known.symptom, result.stdout + result.stderr):
            pytest.xfail(f"{cls.engine} engine: {known.reason} (observed: {problems[0]})")

    def test_hello(self, guest_runs) -> None:
        self.run_guest("hello", guest_runs)

    def test_triple_fault(self, guest_runs) -> None:
        self.run_guest("triple_fault", guest_runs)

    def test_paging32(self, guest_runs) -> None:
        self.run_guest("paging32", guest_runs)

    def test_long_mode(self, guest_runs) -> None:
        self.run_guest("long_mode", guest_runs)

    def test_paging64(self, guest_runs) -> None:
        self.run_guest("paging64", guest_runs)

    def test_exceptions(self, guest_runs) -> None:
        self.run_guest("exceptions", guest_runs)

    def test_privilege(self, guest_runs) -> None:
        self.run_guest("privilege", guest_runs)

    def test_user64(self, guest_runs) -> None:
        self.run_guest("user64", guest_runs)

    def test_smc(self, guest_runs) -> None:
        self.run_guest("smc", guest_runs)

    def test_pagetable_writes(self, guest_runs) -> None:
        self.run_guest("pagetable_writes", guest_runs)

    def test_realmode(self, guest_runs) -> None:
        self.run_guest("realmode", guest_runs)

    def test_v86(self, guest_runs) -> None:
        self.run_guest("v86", guest_runs)

    def test_sse(self, guest_runs) -> None:
        self.run_guest("sse", guest_runs)

    def test_x87(self, guest_runs) -> None:
        self.run_guest("x87", guest_runs)

    def test_timer_irq(self, guest_runs) -> None:
        self.run_guest("timer_irq", guest_runs)

    def test_rtc_irq(self, guest_runs) -> None:
        self.run_guest("rtc_irq", guest_runs)

    def test_smp(self, guest_runs) -> None:
        self.run_guest("smp", guest_runs)

    def test_pio_loop(self, guest_runs) -> None:
        self.run_guest("pio_loop", guest_runs)

    def test_cpu_bound(self, guest_runs) -> None:
        self.run_guest("cpu_bound", guest_runs)

    def test_every_guest_has_a_test(self) -> None:
        assert sorted(GUESTS) == sorted(name[len("test_"):] for name in dir(self)
                                        if name.startswith("test_") and name != "test_every_guest_has_a_test")


@pytest.mark.kvm
@pytest.mark.usefixtures("kvm_available")
class TestGuestsKvm(GuestConformance):
    engine = "kvm"
    known_failures = (
        {
            "paging32": PVM_NO_32BIT_PAGING,
            "pagetable_writes": PVM_NO_32BIT_PAGING,
            "user64": PVM_SYSRET_GP,
            "privilege": PVM_USER_INT_UD,
        }
        if pvm_host()
        else {}
    )


class TestGuestsBt(GuestConformance):
    engine = "bt"


@pytest.mark.kvm
@pytest.mark.parametrize("name", list(GUESTS))
def test_same_console_on_both_engines(name: str, kvm_available, guest_runs) -> None:
    """Differential: a guest that passes on kvm prints exactly the same COM1 text on bt."""
    (kvm, kvm_problems), (bt, bt_problems) = guest_runs("kvm", name), guest_runs("bt", name)
    if kvm_problems:
        pytest.skip(f"{name} does not pass on kvm here, so kvm is no oracle for it (see TestGuestsKvm)")
    TestGuestsBt.xfail_if_known(name, bt, bt_problems)
    assert not bt_problems, "\n".join(bt_problems)
    assert bt.stdout == kvm.stdout, f"kvm:\n{kvm.stdout}\nbt:\n{bt.stdout}"
