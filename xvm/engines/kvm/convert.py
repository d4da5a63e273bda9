"""Register state between KVM's structs and xvm's types (engine-neutral Regs/SpecialRegs, bt's FPU state).

kvm_regs/kvm_sregs are linux/kvm.h's (abi.py); x87/SSE state travels as the
FXSAVE image at the start of KVM_GET_XSAVE's area (SDM Vol. 1 10.5.1), which
is also how the bt engine's FpuState keeps it, so that conversion is a copy.
"""

from __future__ import annotations

from xvm.arch.x86.regs import GPR_NAMES, DescriptorTable, Regs, Segment, SpecialRegs
from xvm.engines.bt.ops.sse import load_fxsave_image, store_fxsave_image
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
    """Load x87/SSE state from a 64-bit FXSAVE image (the first 512 bytes of KVM_GET_XSAVE's)."""
    cpu.fpu = FpuState()
    load_fxsave_image(cpu, image, 16)


def fpu_to_fxsave(cpu: CpuState, image: bytes) -> bytes:
    """`image` (an FXSAVE image) with the fields bt models replaced by `cpu`'s; the rest stays."""
    out = bytearray(image[:FXSAVE_SIZE])
    store_fxsave_image(cpu, out, 16)
    return bytes(out)
