"""The test guests on both engines: one mixin, one test per guest.

Each test boots a guest with `xvm run --engine ENGINE --kernel GUEST.elf` and
checks the exact PASS lines the guest prints and its exit status (the value
it writes to port 0xF4, as (v << 1) | 1; 4 for the triple-fault guest). The
guests are first validated against QEMU in test_qemu_reference.py.
Model: py65 tests/devices/test_mpu6502.py (`Common6502Tests`).

An engine that cannot yet run a guest lists it in `known_failures` with the
reason: such a test is reported as xfail only after it has really failed, with
what was observed; it is never skipped.
"""

from __future__ import annotations

import pytest
from guests.build import GUESTS

#: `xvm run` exits 4 when the guest triple-faults.
XVM_TRIPLE_FAULT_STATUS = 4


class GuestConformance:
    """Every guest on one engine; subclasses set `engine`."""

    engine = ""
    #: guest name -> why this engine cannot run it yet.
    known_failures: dict[str, str] = {}
    #: Seconds the VM may run (--timeout) and the margin for the process around it.
    vm_timeout = 30.0

    def run_guest(self, name: str, guests, xvm) -> None:
        guest = GUESTS[name]
        result = xvm(
            "run", "--engine", self.engine, "--kernel", str(guests[name]), "--append", guest.cmdline,
            "--mem", "64M", "--timeout", f"{self.vm_timeout:g}",
            timeout=self.vm_timeout + 30,
        )
        problems = guest.problems(result.returncode, result.stdout, XVM_TRIPLE_FAULT_STATUS)
        if guest.exit_value is None and "triple fault" not in result.stderr:
            problems.append("stderr does not say 'triple fault'")
        if "Traceback" in result.stderr:
            problems.append("xvm printed a traceback")
        if problems and name in self.known_failures:
            pytest.xfail(f"{self.engine} engine: {self.known_failures[name]} (observed: {problems[0]})")
        assert not problems, "\n".join(problems) + "\n" + result.describe()

    def test_hello(self, guests, xvm) -> None:
        self.run_guest("hello", guests, xvm)

    def test_triple_fault(self, guests, xvm) -> None:
        self.run_guest("triple_fault", guests, xvm)

    def test_paging32(self, guests, xvm) -> None:
        self.run_guest("paging32", guests, xvm)

    def test_long_mode(self, guests, xvm) -> None:
        self.run_guest("long_mode", guests, xvm)

    def test_exceptions(self, guests, xvm) -> None:
        self.run_guest("exceptions", guests, xvm)

    def test_privilege(self, guests, xvm) -> None:
        self.run_guest("privilege", guests, xvm)

    def test_smc(self, guests, xvm) -> None:
        self.run_guest("smc", guests, xvm)

    def test_pagetable_writes(self, guests, xvm) -> None:
        self.run_guest("pagetable_writes", guests, xvm)

    def test_realmode(self, guests, xvm) -> None:
        self.run_guest("realmode", guests, xvm)

    def test_v86(self, guests, xvm) -> None:
        self.run_guest("v86", guests, xvm)

    def test_pio_loop(self, guests, xvm) -> None:
        self.run_guest("pio_loop", guests, xvm)

    def test_every_guest_has_a_test(self) -> None:
        assert sorted(GUESTS) == sorted(name[len("test_"):] for name in dir(self)
                                        if name.startswith("test_") and name != "test_every_guest_has_a_test")


@pytest.mark.kvm
@pytest.mark.usefixtures("kvm_available")
class TestGuestsKvm(GuestConformance):
    engine = "kvm"


class TestGuestsBt(GuestConformance):
    engine = "bt"
