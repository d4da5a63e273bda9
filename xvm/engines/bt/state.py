"""Live CPU state of one bt vCPU.

Kept as plain attributes and lists (not dataclasses of dataclasses) because the
interpreter and translated blocks touch it on every instruction: PyPy's JIT
and CPython both do best with attribute access on one object and list
indexing. Conversion to and from the engine-neutral Regs/SpecialRegs happens
only at the edges (boot, snapshot, register dump).

Register numbering is the hardware encoding: 0=RAX 1=RCX 2=RDX 3=RBX 4=RSP
5=RBP 6=RSI 7=RDI 8..15=R8..R15 (as in ModRM/REX). Segment numbering is
the SREG encoding: 0=ES 1=CS 2=SS 3=DS 4=FS 5=GS.
"""

from __future__ import annotations

from xvm.arch.x86.regs import (
    CR0_PE,
    EFER_LMA,
    RFLAGS_FIXED,
    RFLAGS_VM,
    DescriptorTable,
    Regs,
    Segment,
    SpecialRegs,
)

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
ES, CS, SS, DS, FS, GS = range(6)
SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
#: Encoding order -> Regs field name.
#: Operating modes (SDM Vol. 3 2.2); `CpuState.mode` holds one of these.
MODE_REAL, MODE_PROTECTED, MODE_V86, MODE_COMPAT, MODE_LONG = range(5)
GPR_FIELDS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


class SegmentCache:
    """A segment register: the visible selector plus the hidden descriptor cache.

    Loading a segment register copies the descriptor here (SDM Vol. 3 3.4.3);
    later writes to the GDT/LDT do not change it, as on hardware.
    `access` holds descriptor bits 40..47 (type, S, DPL, P) and `flags`
    bits 52..55 (AVL, L, D/B, G); `limit` is the byte-granular limit.
    """

    __slots__ = ("selector", "base", "limit", "access", "flags")

    def __init__(self, selector: int = 0, base: int = 0, limit: int = 0xFFFF,
                 access: int = 0x93, flags: int = 0) -> None:
        self.selector = selector
        self.base = base
        self.limit = limit
        self.access = access
        self.flags = flags

    @property
    def dpl(self) -> int:
        return (self.access >> 5) & 3

    @property
    def present(self) -> bool:
        return bool(self.access & 0x80)

    @property
    def db(self) -> int:
        return (self.flags >> 2) & 1

    @property
    def long(self) -> int:
        return (self.flags >> 1) & 1

    def to_segment(self) -> Segment:
        return Segment(
            base=self.base, limit=self.limit, selector=self.selector, type_=self.access & 0xF,
            present=self.present, dpl=self.dpl, db=self.db, s=(self.access >> 4) & 1,
            l=self.long, g=(self.flags >> 3) & 1, avl=self.flags & 1,
            unusable=not self.present,
        )

    @classmethod
    def from_segment(cls, seg: Segment) -> SegmentCache:
        access = (seg.type_ & 0xF) | (seg.s << 4) | (seg.dpl << 5) | (0x80 if seg.present else 0)
        flags = seg.avl | (seg.l << 1) | (seg.db << 2) | (seg.g << 3)
        return cls(seg.selector, seg.base, seg.limit, access, flags)


class CpuState:
    """Architectural state of one vCPU (SDM Vol. 1 ch. 3, Vol. 3 ch. 2)."""

    def __init__(self) -> None:
        self.regs: list[int] = [0] * 16
        self.rip = 0xFFF0
        #: RFLAGS with every flag materialised (lazy flags, if any, are the executor's business).
        self.rflags = RFLAGS_FIXED
        self.segs: list[SegmentCache] = [SegmentCache() for _ in range(6)]
        self.segs[CS] = SegmentCache(0xF000, 0xFFFF0000, 0xFFFF, 0x9B, 0)
        self.ldtr = SegmentCache(0, 0, 0xFFFF, 0x82, 0)
        self.tr = SegmentCache(0, 0, 0xFFFF, 0x8B, 0)
        self.gdtr_base = 0
        self.gdtr_limit = 0xFFFF
        self.idtr_base = 0
        self.idtr_limit = 0xFFFF
        self.cr0 = 0x60000010
        self.cr2 = 0
        self.cr3 = 0
        self.cr4 = 0
        self.cr8 = 0
        self.efer = 0
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
        #: MSRs other than EFER, by index.
        self.msrs = {}
        #: Initial APIC ID, reported in CPUID.01H:EBX[31:24]: the vCPU index, set by the engine.
        self.apic_id = 0
        #: IA32_APIC_BASE as the local APIC model sees it (`read()`, `write(value)`), set by the engine
        #: when the machine has LAPICs; without one the MSR is only stored in `msrs`.
        self.apic_base_msr = None
        #: Current privilege level (CS.RPL outside real/v86 quirks; kept explicitly).
        self.cpl = 0
        #: Instructions retired (drives virtual time).
        self.icount = 0
        self.halted = False
        #: Interrupt shadow after MOV SS / POP SS / STI (one instruction).
        self.interrupt_shadow = False
        #: Set by NMI delivery, cleared by the next IRET: no second NMI nests inside the handler.
        self.nmi_blocked = False
        self.a20_enabled = True
        #: Behave as an 80286 where it differs from later CPUs (decoder.decode's `i286`, real-mode
        #: overruns as int 13): the interpreter-only level the 286 hardware tests run at.
        self.i286 = False
        #: x87/SSE state (FXSAVE image layout is the executor's business).
        self.fpu = None
        self.xmm: list[int] = [0] * 16
        self.mxcsr = 0x1F80
        #: Derived by refresh_mode(): one of MODE_*, default code/stack sizes in bits.
        self.mode = MODE_REAL
        self.code_bits = 16
        self.stack_bits = 16

    def refresh_mode(self) -> None:
        """Recompute mode, code_bits and stack_bits.

        Call after anything that changes CR0.PE, EFER.LMA, RFLAGS.VM, CS or SS
        (MOV CR0, WRMSR EFER, far transfers, interrupts, IRET, POPF, MOV SS).
        Real and virtual-8086 mode also fix the CPL (0 and 3).
        """
        cs = self.segs[CS]
        if not self.cr0 & CR0_PE:
            self.mode = MODE_REAL
            self.code_bits = 32 if cs.flags & 4 else 16
            self.cpl = 0
        elif self.rflags & RFLAGS_VM:
            self.mode = MODE_V86
            self.code_bits = 16
            self.cpl = 3
        elif self.efer & EFER_LMA and cs.flags & 2:
            self.mode = MODE_LONG
            self.code_bits = 64
        else:
            self.mode = MODE_COMPAT if self.efer & EFER_LMA else MODE_PROTECTED
            self.code_bits = 32 if cs.flags & 4 else 16
        if self.mode == MODE_LONG:
            self.stack_bits = 64
        else:
            self.stack_bits = 32 if self.segs[SS].flags & 4 else 16

    # --- edges: engine-neutral state ---------------------------------------
    def get_regs(self) -> Regs:
        values = {name: self.regs[i] for i, name in enumerate(GPR_FIELDS)}
        return Regs(rip=self.rip, rflags=self.rflags, **values)

    def set_regs(self, regs: Regs) -> None:
        for i, name in enumerate(GPR_FIELDS):
            self.regs[i] = getattr(regs, name)
        self.rip = regs.rip
        self.rflags = regs.rflags | RFLAGS_FIXED
        self.refresh_mode()

    def get_sregs(self) -> SpecialRegs:
        sregs = SpecialRegs(
            tr=self.tr.to_segment(), ldt=self.ldtr.to_segment(),
            gdt=DescriptorTable(self.gdtr_base, self.gdtr_limit),
            idt=DescriptorTable(self.idtr_base, self.idtr_limit),
            cr0=self.cr0, cr2=self.cr2, cr3=self.cr3, cr4=self.cr4, cr8=self.cr8, efer=self.efer,
        )
        for i, name in enumerate(SEGMENT_NAMES):
            setattr(sregs, name, self.segs[i].to_segment())
        return sregs

    def set_sregs(self, sregs: SpecialRegs) -> None:
        for i, name in enumerate(SEGMENT_NAMES):
            self.segs[i] = SegmentCache.from_segment(getattr(sregs, name))
        self.tr = SegmentCache.from_segment(sregs.tr)
        self.ldtr = SegmentCache.from_segment(sregs.ldt)
        self.gdtr_base, self.gdtr_limit = sregs.gdt.base, sregs.gdt.limit
        self.idtr_base, self.idtr_limit = sregs.idt.base, sregs.idt.limit
        self.cr0, self.cr2, self.cr3, self.cr4, self.cr8 = sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8
        self.efer = sregs.efer
        self.cpl = self.segs[CS].dpl if self.cr0 & CR0_PE else 0
        self.refresh_mode()
