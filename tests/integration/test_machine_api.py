"""The Python API boots a guest of ours: `Machine(MachineConfig(...)).run()` returns its status and COM1 text."""

from __future__ import annotations

import pytest
from guests.build import GUESTS

from xvm import BootConfig, Machine, MachineConfig


@pytest.mark.kvm
def test_hello_through_the_api(kvm_available, guests) -> None:
    guest = GUESTS["hello"]
    config = MachineConfig(mem_mib=64, engine="kvm", timeout=30,
                           boot=BootConfig(kernel=guests["hello"], cmdline=guest.cmdline))
    with Machine(config) as vm:
        result = vm.run()
    assert guest.problems(result.exit_code, result.output, triple_fault_status=4) == [], result
    assert "hello from multiboot" in result.output


@pytest.mark.kvm
def test_triple_fault_through_the_api(kvm_available, guests) -> None:
    config = MachineConfig(mem_mib=64, engine="kvm", timeout=30,
                           boot=BootConfig(kernel=guests["triple_fault"], cmdline=""))
    with Machine(config) as vm:
        result = vm.run()
    assert result.exit_code == 4, result
    assert "RIP=" in result.dump and "CR0=" in result.dump, result
