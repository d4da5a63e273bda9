"""Register state between KVM's structs and xvm's types (engine-neutral Regs/SpecialRegs, bt's FPU state).

kvm_regs/kvm_sregs are linux/kvm.h's (abi.py); x87/SSE state travels as the
FXSAVE image at the start of KVM_GET_XSAVE's area (SDM Vol. 1 10.5.1), which
is also how the bt engine's FpuState keeps it, so that conversion is a copy.
"""

from __future__ import annotations

from xvm.arch.x86.regs import GPR_NAMES, DescriptorTable, Regs, Segment, SpecialRegs
from xvm.engines.bt.ops.x87 import FpuState
from xvm.engines.bt.state import CpuState
from xvm.engines.kvm import abi

#: kvm_sregs fields copied as they are (apic_base included: KVM_SET_SREGS writes it).
CONTROL_REGISTERS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
FXSAVE_SIZE = 512


def segment_to_kvm(segment: Segment) -> abi.kvm_segment:
    return abi.kvm_segment(
        base=segment.base, limit=segment.limit, selector=segment.selector, type=segment.type_,
        present=int(segment.present), dpl=segment.dpl, db=segment.db, s=segment.s, l=segment.l,
        g=segment.g, avl=segment.avl, unusable=int(segment.unusable),
    )


def segment_from_kvm(kvm_segment: abi.kvm_segment) -> Segment:
    return Segment(
        base=kvm_segment.base, limit=kvm_segment.limit, selector=kvm_segment.selector,
        type_=kvm_segment.type, present=bool(kvm_segment.present), dpl=kvm_segment.dpl,
        db=kvm_segment.db, s=kvm_segment.s, l=kvm_segment.l, g=kvm_segment.g, avl=kvm_segment.avl,
        unusable=bool(kvm_segment.unusable),
    )


def regs_from_kvm(kvm_regs: abi.kvm_regs) -> Regs:
    return Regs(**{name: getattr(kvm_regs, name) for name in (*GPR_NAMES, "rip", "rflags")})


def regs_to_kvm(regs: Regs) -> abi.kvm_regs:
    kvm_regs = abi.kvm_regs()
    for name in (*GPR_NAMES, "rip", "rflags"):
        setattr(kvm_regs, name, getattr(regs, name))
    return kvm_regs


def sregs_from_kvm(kvm_sregs: abi.kvm_sregs) -> SpecialRegs:
    sregs = SpecialRegs()
    for name in SpecialRegs.SEGMENT_NAMES:
        setattr(sregs, name, segment_from_kvm(getattr(kvm_sregs, name)))
    sregs.gdt = DescriptorTable(kvm_sregs.gdt.base, kvm_sregs.gdt.limit)
    sregs.idt = DescriptorTable(kvm_sregs.idt.base, kvm_sregs.idt.limit)
    for name in CONTROL_REGISTERS:
        setattr(sregs, name, getattr(kvm_sregs, name))
    return sregs


def sregs_to_kvm(sregs: SpecialRegs, kvm_sregs: abi.kvm_sregs) -> None:
    """Store `sregs` into `kvm_sregs` in place (fields xvm does not model, the interrupt bitmap, stay)."""
    for name in SpecialRegs.SEGMENT_NAMES:
        setattr(kvm_sregs, name, segment_to_kvm(getattr(sregs, name)))
    kvm_sregs.gdt = abi.kvm_dtable(base=sregs.gdt.base, limit=sregs.gdt.limit)
    kvm_sregs.idt = abi.kvm_dtable(base=sregs.idt.base, limit=sregs.idt.limit)
    for name in CONTROL_REGISTERS:
        setattr(kvm_sregs, name, getattr(sregs, name))


def fpu_from_fxsave(image: bytes, cpu: CpuState) -> None:
    """Load x87/SSE state from a 64-bit FXSAVE image (SDM Vol. 1 Table 10-2), the first 512 bytes of
    KVM_GET_XSAVE's; bt's FpuState keeps the same fields (abridged tag word, ST slots as 80-bit images)."""
    state = FpuState()
    state.fcw = int.from_bytes(image[0:2], "little")
    state.fsw = int.from_bytes(image[2:4], "little")
    state.ftw = image[4]
    state.fop = int.from_bytes(image[6:8], "little")
    state.fip = int.from_bytes(image[8:16], "little")
    state.fdp = int.from_bytes(image[16:24], "little")
    state.st = [bytes(image[32 + 16 * i:42 + 16 * i]) for i in range(8)]
    cpu.fpu = state
    cpu.mxcsr = int.from_bytes(image[24:28], "little")
    cpu.xmm = [int.from_bytes(image[160 + 16 * i:176 + 16 * i], "little") for i in range(16)]


def fpu_to_fxsave(cpu: CpuState, image: bytes) -> bytes:
    """`image` (an FXSAVE image) with the fields bt models replaced by `cpu`'s; the rest stays."""
    state = cpu.fpu
    out = bytearray(image[:FXSAVE_SIZE])
    out[0:2] = state.fcw.to_bytes(2, "little")
    out[2:4] = state.fsw.to_bytes(2, "little")
    out[4] = state.ftw
    out[6:8] = state.fop.to_bytes(2, "little")
    out[8:16] = state.fip.to_bytes(8, "little")
    out[16:24] = state.fdp.to_bytes(8, "little")
    out[24:28] = cpu.mxcsr.to_bytes(4, "little")
    for i in range(8):
        out[32 + 16 * i:42 + 16 * i] = state.st[i]
    for i in range(16):
        out[160 + 16 * i:176 + 16 * i] = cpu.xmm[i].to_bytes(16, "little")
    return bytes(out)
