"""Engine-neutral x86 register state.

Both engines read and write these dataclasses: the kvm engine converts them
to struct kvm_regs / kvm_sregs, the bt engine keeps its own live state and
converts at the edges (boot, snapshot, register dump). Field names follow the
SDM and KVM's headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)

# CR0 bits
CR0_PE = 1 << 0   # protected mode
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16  # supervisor writes honour R/W
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31  # paging
# CR4 bits
CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_MCE = 1 << 6
CR4_PGE = 1 << 7
CR4_PCE = 1 << 8
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_UMIP = 1 << 11
CR4_FSGSBASE = 1 << 16
CR4_PCIDE = 1 << 17
CR4_OSXSAVE = 1 << 18
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
# EFER bits (MSR 0xC0000080)
EFER_SCE = 1 << 0   # SYSCALL enable
EFER_LME = 1 << 8   # long mode enable
EFER_LMA = 1 << 10  # long mode active
EFER_NXE = 1 << 11  # no-execute enable
# RFLAGS bits
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1  # always reads as 1
RFLAGS_PF = 1 << 2
RFLAGS_AF = 1 << 4
RFLAGS_ZF = 1 << 6
RFLAGS_SF = 1 << 7
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_OF = 1 << 11
RFLAGS_IOPL = 3 << 12
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18
RFLAGS_VIF = 1 << 19
RFLAGS_VIP = 1 << 20
RFLAGS_ID = 1 << 21


@dataclass
class Regs:
    """General-purpose registers, RIP and RFLAGS."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = RFLAGS_FIXED


@dataclass
class Segment:
    """A segment register with its hidden descriptor cache (what the CPU really uses).

    `type_` is the 4-bit descriptor type; `s` is 1 for code/data, 0 for system
    segments; `db` is the default operand size bit; `l` the 64-bit code bit.
    """

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type_: int = 3
    present: bool = True
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - the SDM's name for the 64-bit code bit
    g: int = 0
    avl: int = 0
    unusable: bool = False


@dataclass
class DescriptorTable:
    """GDTR/IDTR: linear base and limit."""

    base: int = 0
    limit: int = 0xFFFF


def _real_mode_code() -> Segment:
    # Reset state: CS.selector=0xF000, base=0xFFFF0000 (SDM Vol. 3 9.1.4).
    return Segment(base=0xFFFF0000, limit=0xFFFF, selector=0xF000, type_=0xB)


def _tss() -> Segment:
    return Segment(type_=0xB, s=0)


def _ldt() -> Segment:
    return Segment(type_=0x2, s=0)


@dataclass
class SpecialRegs:
    """Segment, descriptor-table, control registers and EFER."""

    cs: Segment = field(default_factory=_real_mode_code)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=_tss)
    ldt: Segment = field(default_factory=_ldt)
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = CR0_ET | CR0_CD | CR0_NW
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0xFEE00900

    SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


def format_register_dump(regs: Regs, sregs: SpecialRegs) -> str:
    """The multi-line register dump printed when a VM stops on a guest fault."""
    lines = []
    names = [f.name for f in fields(Regs)]
    for i in range(0, len(names), 4):
        lines.append("  ".join(f"{n.upper():>6}={getattr(regs, n):016x}" for n in names[i:i + 4]))
    for name in SpecialRegs.SEGMENT_NAMES:
        seg: Segment = getattr(sregs, name)
        lines.append(
            f"{name.upper():>6}={seg.selector:04x} base={seg.base:016x} limit={seg.limit:08x} "
            f"type={seg.type_:x} s={seg.s} dpl={seg.dpl} p={int(seg.present)} db={seg.db} l={seg.l} g={seg.g}"
        )
    lines.append(
        f"   GDT={sregs.gdt.base:016x}/{sregs.gdt.limit:04x}   IDT={sregs.idt.base:016x}/{sregs.idt.limit:04x}"
    )
    lines.append(
        f"   CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x} "
        f"EFER={sregs.efer:x}"
    )
    return "\n".join(lines)
