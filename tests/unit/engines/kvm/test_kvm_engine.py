"""KvmVcpu.run()'s exit handling against a scripted fake vCPU fd (no KVM needed).

Covers the PVM emulation-failure path, which real hardware never takes: the
failing instruction runs in bt's interpreter (fallback.py) over the guest's
RAM, its fault is delivered through the guest's IVT/IDT, and what the
fallback refuses becomes an InternalError naming the bytes and RIP.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

from xvm.arch.x86.regs import Segment
from xvm.engines.base import InternalError, Interrupted, IoOut, Shutdown
from xvm.engines.kvm import abi
from xvm.engines.kvm.engine import KvmVcpu, segment_from_kvm, segment_to_kvm
from xvm.memory.guest_memory import GuestMemory

EMULATION = abi.KVM_INTERNAL_ERROR_EMULATION


class FakeVcpuFd:
    """Plays back `exits` from run() and keeps registers, events, FPU and MSRs like KVM would.

    Starts in real mode with CS=DS=ES=SS=0 (64 KiB limits), as a vCPU after reset pointed at RAM.
    """

    def __init__(self, exits: list, rip: int) -> None:
        self.fd = 3
        self.exits = list(exits)
        self.regs = abi.kvm_regs(rip=rip, rflags=0x2)
        self.sregs = abi.kvm_sregs(cr0=0x10, apic_base=0xFEE00900)
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            setattr(self.sregs, name, abi.kvm_segment(limit=0xFFFF, type=0xB if name == "cs" else 0x3,
                                                      present=1, s=1))
        self.sregs.tr = abi.kvm_segment(limit=0xFFFF, type=0xB, present=1)
        self.sregs.ldt = abi.kvm_segment(limit=0xFFFF, type=0x2, present=1)
        self.sregs.idt = abi.kvm_dtable(base=0, limit=0x3FF)
        self.sregs.gdt = abi.kvm_dtable(base=0, limit=0xFFFF)
        xsave = bytearray(4096)
        xsave[0:2], xsave[24:28] = (0x37F).to_bytes(2, "little"), (0x1F80).to_bytes(4, "little")
        self.xsave = bytes(xsave)
        self.events = abi.kvm_vcpu_events()
        self.msrs = {0x10: 1000}
        self.mp_state = 0
        self.immediate_exit = False

    def run(self):
        return self.exits.pop(0)

    def get_regs(self):
        return abi.kvm_regs.from_buffer_copy(self.regs)

    def set_regs(self, regs):
        self.regs = regs

    def get_sregs(self):
        return abi.kvm_sregs.from_buffer_copy(self.sregs)

    def set_sregs(self, sregs):
        self.sregs = sregs

    def get_xsave(self):
        return self.xsave

    def set_xsave(self, image):
        self.xsave = image

    def get_msrs(self, indices):
        return {index: self.msrs.get(index, 0) for index in indices}

    def set_msrs(self, values):
        self.msrs.update(values)
        return len(values)

    def set_mp_state(self, mp_state):
        self.mp_state = mp_state

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


OUT = IoOut(0xF4, 1, 1, b"\x00")


def test_int3_is_delivered_through_the_guest_ivt() -> None:
    vcpu = _vcpu(b"\xcc\x90", [InternalError(EMULATION), OUT])
    vcpu.vm.memory.write(3 * 4, struct.pack("<HH", 0x3000, 0x0000))  # IVT[3] = 0000:3000
    vcpu.fd.regs.rsp = 0x2000
    assert vcpu.run() is OUT
    assert (vcpu.fd.regs.rip, vcpu.fd.regs.rsp) == (0x3000, 0x1FFA)
    # The real-mode frame: IP after INT3, CS, FLAGS (SDM Vol. 3 20.1.4).
    assert struct.unpack("<HHH", vcpu.vm.memory.read(0x1FFA, 6)) == (0x1001, 0, 0x2)
    assert vcpu.stats == {"pvm_fallback_int3": 1, "IoOut": 1}


def test_fwait_with_nothing_pending_only_moves_rip() -> None:
    vcpu = _vcpu(b"\x9b\x90", [InternalError(EMULATION), OUT])
    vcpu.fd.sregs.cr0 |= 0x8  # TS without MP: FWAIT does not fault (SDM Vol. 2B WAIT/FWAIT)
    sregs, xsave = bytes(vcpu.fd.sregs), vcpu.fd.xsave
    assert vcpu.run() is OUT
    assert vcpu.fd.regs.rip == 0x1001
    assert (bytes(vcpu.fd.sregs), vcpu.fd.xsave) == (sregs, xsave)
    assert vcpu.fd.events.exception.injected == 0
    assert vcpu.stats == {"pvm_fwait": 1, "IoOut": 1}


def test_fwait_that_faults_goes_to_the_fallback() -> None:
    # CR0.MP and TS: #NM through the IVT, from the fallback, not the fast path.
    vcpu = _vcpu(b"\x9b\x90", [InternalError(EMULATION), OUT])
    vcpu.fd.sregs.cr0 |= 0xA
    vcpu.vm.memory.write(7 * 4, struct.pack("<HH", 0x3000, 0x0000))  # IVT[7] = 0000:3000
    vcpu.fd.regs.rsp = 0x2000
    assert vcpu.run() is OUT
    assert vcpu.fd.regs.rip == 0x3000
    assert vcpu.stats == {"pvm_fallback_wait": 1, "IoOut": 1}


def test_fwait_with_a_pending_x87_exception_goes_to_the_fallback() -> None:
    vcpu = _vcpu(b"\x9b\x90", [InternalError(EMULATION), OUT])
    xsave = bytearray(vcpu.fd.xsave)
    xsave[2:4] = (0x81).to_bytes(2, "little")  # FSW: ES | IE, as after an unmasked invalid operation
    vcpu.fd.xsave = bytes(xsave)
    vcpu.run()
    assert "pvm_fwait" not in vcpu.stats and "pvm_fallback_wait" in vcpu.stats


def test_sti_sets_the_interrupt_shadow() -> None:
    vcpu = _vcpu(b"\xfb\x90", [InternalError(EMULATION), OUT])
    assert vcpu.run() is OUT
    assert vcpu.fd.regs.rflags & 0x200
    assert vcpu.fd.events.flags & abi.KVM_VCPUEVENT_VALID_SHADOW and vcpu.fd.events.interrupt.shadow == 2


def test_x87_state_goes_through_kvm_fpu() -> None:
    # fld1; fistp word [0x2000]: the x87 stack is pushed and popped through bt and back.
    vcpu = _vcpu(bytes.fromhex("d9e8df1e0020"), [InternalError(EMULATION), InternalError(EMULATION), OUT])
    assert vcpu.run() is OUT
    assert vcpu.vm.memory.read(0x2000, 2) == b"\x01\x00"
    assert vcpu.fd.regs.rip == 0x1006
    assert vcpu.stats["pvm_fallback_fld1"] == 1 and vcpu.stats["pvm_fallback_fistp"] == 1
    assert vcpu.fd.xsave[512] & 3 == 3  # XSTATE_BV: x87 and SSE state in use


def test_port_io_is_refused_and_reported() -> None:
    vcpu = _vcpu(b"\xec", [InternalError(EMULATION, "data: 0x1")])  # in al, dx
    exit_ = vcpu.run()
    assert isinstance(exit_, InternalError)
    assert "RIP=0x1000" in exit_.detail and "(bytes ec" in exit_.detail and "refused" in exit_.detail
    assert "data: 0x1" in exit_.detail
    assert vcpu.fd.regs.rip == 0x1000
    assert vcpu.stats == {"InternalError": 1}


def test_instructions_bt_lacks_are_reported_not_turned_into_ud() -> None:
    vcpu = _vcpu(bytes.fromhex("0fae2f"), [InternalError(EMULATION)])  # xrstor [bx]
    exit_ = vcpu.run()
    assert isinstance(exit_, InternalError) and "0f ae 2f" in exit_.detail and "#UD" in exit_.detail
    assert vcpu.fd.regs.rip == 0x1000


def test_a_fault_that_cannot_be_delivered_is_a_triple_fault() -> None:
    # Protected mode with an empty IDT: the #GP of `mov ds, ax` (selector 0x08 beyond an empty GDT) escalates.
    vcpu = _vcpu(b"\x8e\xd8", [InternalError(EMULATION)])
    _protected(vcpu)
    vcpu.fd.sregs.idt = abi.kvm_dtable(base=0, limit=0)
    vcpu.fd.sregs.gdt = abi.kvm_dtable(base=0, limit=0)
    vcpu.fd.regs.rax = 0x08
    assert vcpu.run() == Shutdown("triple fault")


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
    sregs.cr0 = 0x11
    for name in ("cs", "ds", "es", "ss"):
        segment = getattr(sregs, name)
        segment.limit, segment.g, segment.db = 0xFFFFFFFF, 1, 1
    sregs.cs.selector = cs_selector
    sregs.ss.selector = sregs.ds.selector = sregs.es.selector = 0x10


GDT = 0x500
#: null, ring-0 code 0x08, ring-0 data 0x10, ring-3 code 0x1B, ring-3 data 0x23 (flat 4 GiB).
_GDT = struct.pack("<5Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFFA000000FFFF, 0x00CFF2000000FFFF)


def test_iretd_to_ring_3_is_performed() -> None:
    vcpu = _vcpu(b"\xcf", [InternalError(EMULATION), OUT])
    _protected(vcpu)
    vcpu.fd.sregs.gdt = abi.kvm_dtable(base=GDT, limit=len(_GDT) - 1)
    vcpu.vm.memory.write(GDT, _GDT)
    vcpu.fd.regs.rsp = 0x2000
    vcpu.fd.events.nmi.masked = 1
    vcpu.vm.memory.write(0x2000, struct.pack("<5I", 0x3456, 0x1B, 0x202, 0x3F00, 0x23))
    assert vcpu.run() is OUT
    assert (vcpu.fd.regs.rip, vcpu.fd.regs.rsp, vcpu.fd.regs.rflags) == (0x3456, 0x3F00, 0x202)
    assert (vcpu.fd.sregs.cs.selector, vcpu.fd.sregs.cs.dpl, vcpu.fd.sregs.ss.selector, vcpu.fd.sregs.ss.dpl) == (
        0x1B, 3, 0x23, 3)
    assert vcpu.fd.events.nmi.masked == 0
    assert vcpu.stats["pvm_fallback_iret"] == 1


def test_iret32_same_segment_takes_the_fast_path() -> None:
    vcpu = _vcpu(b"\xcf", [InternalError(EMULATION), OUT])
    _protected(vcpu)
    vcpu.fd.regs.rsp = 0x2000
    vcpu.fd.events.nmi.masked = 1
    vcpu.vm.memory.write(0x2000, struct.pack("<III", 0x3456, 0x08, 0x246))
    assert vcpu.run() is OUT
    assert (vcpu.fd.regs.rip, vcpu.fd.regs.rsp, vcpu.fd.regs.rflags) == (0x3456, 0x200C, 0x246)
    assert vcpu.fd.events.nmi.masked == 0
    assert vcpu.stats == {"pvm_iret32": 1, "IoOut": 1}
