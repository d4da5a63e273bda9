"""KvmVcpu.run()'s exit handling against a scripted fake vCPU fd (no KVM needed).

Covers the PVM emulation-failure path, which real hardware never takes: INT3
is stepped over with a #BP injected, FWAIT is stepped over, anything else
becomes an InternalError naming the bytes and RIP.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

from xvm.arch.x86.regs import Segment
from xvm.engines.base import InternalError, Interrupted, IoOut
from xvm.engines.kvm import abi
from xvm.engines.kvm.engine import KvmVcpu, segment_from_kvm, segment_to_kvm
from xvm.memory.guest_memory import GuestMemory

EMULATION = abi.KVM_INTERNAL_ERROR_EMULATION


class FakeVcpuFd:
    """Plays back `exits` from run() and keeps registers and events like KVM would."""

    def __init__(self, exits: list, rip: int) -> None:
        self.fd = 3
        self.exits = list(exits)
        self.regs = abi.kvm_regs(rip=rip)
        self.sregs = abi.kvm_sregs()
        self.events = abi.kvm_vcpu_events()
        self.immediate_exit = False

    def run(self):
        return self.exits.pop(0)

    def get_regs(self):
        return abi.kvm_regs.from_buffer_copy(self.regs)

    def set_regs(self, regs):
        self.regs = regs

    def get_sregs(self):
        return abi.kvm_sregs.from_buffer_copy(self.sregs)

    def translate(self, linear):
        return abi.kvm_translation(linear_address=linear, physical_address=linear, valid=1)

    def get_vcpu_events(self):
        return abi.kvm_vcpu_events.from_buffer_copy(self.events)

    def set_vcpu_events(self, events):
        self.events = events

    def set_immediate_exit(self, value):
        self.immediate_exit = value


def _vcpu(code: bytes, exits: list):
    memory = GuestMemory.allocate(0x4000)
    memory.write(0x1000, code)
    vcpu = KvmVcpu.__new__(KvmVcpu)  # skip KVM setup: fd and vm are fakes
    vcpu.vm = SimpleNamespace(memory=memory)
    vcpu.index = 0
    vcpu.fd = FakeVcpuFd(exits, 0x1000)
    vcpu.stats = {}
    vcpu._thread = None
    return vcpu


def test_int3_is_stepped_over_with_bp_injected() -> None:
    out = IoOut(0xF4, 1, 1, b"\x00")
    vcpu = _vcpu(b"\xcc\x90", [InternalError(EMULATION), out])
    assert vcpu.run() is out
    assert vcpu.fd.regs.rip == 0x1001
    assert vcpu.fd.events.exception.injected == 1 and vcpu.fd.events.exception.nr == 3
    assert vcpu.stats == {"pvm_int3": 1, "IoOut": 1}


def test_fwait_is_stepped_over() -> None:
    out = IoOut(0xF4, 1, 1, b"\x00")
    vcpu = _vcpu(b"\x9b\x90", [InternalError(EMULATION), out])
    assert vcpu.run() is out
    assert vcpu.fd.regs.rip == 0x1001
    assert vcpu.fd.events.exception.injected == 0
    assert vcpu.stats["pvm_fwait"] == 1


def test_other_instructions_are_reported() -> None:
    vcpu = _vcpu(bytes.fromhex("0fae2f"), [InternalError(EMULATION, "data: 0x1")])  # xrstor [rdi]
    exit_ = vcpu.run()
    assert isinstance(exit_, InternalError)
    assert "RIP=0x1000" in exit_.detail and "0f ae 2f" in exit_.detail and "data: 0x1" in exit_.detail
    assert vcpu.stats == {"InternalError": 1}


def test_code_at_the_end_of_ram_is_fetched_partially() -> None:
    vcpu = _vcpu(b"", [InternalError(EMULATION)])
    vcpu.fd.regs.rip = 0x4000 - 2
    exit_ = vcpu.run()
    assert "(bytes 00 00)" in exit_.detail


def test_other_internal_errors_pass_through() -> None:
    error = InternalError(abi.KVM_INTERNAL_ERROR_DELIVERY_EV, "data: 0x80000b0e")
    vcpu = _vcpu(b"\xcc", [error])
    assert vcpu.run() is error
    assert vcpu.fd.regs.rip == 0x1000


def test_interrupted_clears_immediate_exit() -> None:
    vcpu = _vcpu(b"", [Interrupted()])
    vcpu.fd.immediate_exit = True
    assert isinstance(vcpu.run(), Interrupted)
    assert vcpu.fd.immediate_exit is False


def test_segment_conversion_round_trip() -> None:
    segment = Segment(base=0xFFFF0000, limit=0xFFFFF, selector=0x10, type_=0xB, present=True, dpl=3,
                      db=0, s=1, l=1, g=1, avl=1, unusable=False)
    assert segment_from_kvm(segment_to_kvm(segment)) == segment


def _protected(vcpu, cs_selector: int = 0x08) -> None:
    sregs = vcpu.fd.sregs
    sregs.cr0 = 1
    sregs.cs.selector, sregs.cs.db = cs_selector, 1
    sregs.ss.db = 1


def test_iret32_same_segment_is_performed() -> None:
    out = IoOut(0xF4, 1, 1, b"\x00")
    vcpu = _vcpu(b"\xcf", [InternalError(EMULATION), out])
    _protected(vcpu)
    vcpu.fd.regs.rsp = 0x2000
    vcpu.fd.events.nmi.masked = 1
    vcpu.vm.memory.write(0x2000, struct.pack("<III", 0x3456, 0x08, 0x246))
    assert vcpu.run() is out
    assert (vcpu.fd.regs.rip, vcpu.fd.regs.rsp, vcpu.fd.regs.rflags) == (0x3456, 0x200C, 0x246)
    assert vcpu.fd.events.nmi.masked == 0
    assert vcpu.stats["pvm_iret32"] == 1


def test_iret32_to_another_segment_is_reported() -> None:
    vcpu = _vcpu(b"\xcf", [InternalError(EMULATION)])
    _protected(vcpu)
    vcpu.fd.regs.rsp = 0x2000
    vcpu.vm.memory.write(0x2000, struct.pack("<III", 0x3456, 0x1B, 0x246))  # ring 3 code: privilege change
    exit_ = vcpu.run()
    assert isinstance(exit_, InternalError) and "bytes cf" in exit_.detail
    assert vcpu.fd.regs.rip == 0x1000
