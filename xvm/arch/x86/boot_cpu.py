"""Boot vCPU state for a direct kernel entry (no firmware runs before the kernel).

Two entry modes:

* 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot
  Protocol"): long mode with paging on, an identity map covering the kernel,
  zero page and command line, a GDT with __BOOT_CS (0x10) and __BOOT_DS (0x18)
  as flat 4 GiB segments, RSI = zero page. Interrupts off.
* Multiboot v1 (Multiboot Specification 0.6.96, 3.2 "Machine state"):
  32-bit protected mode, paging off, CS a 32-bit flat read/execute segment,
  DS/ES/FS/GS/SS 32-bit flat read/write segments, EAX = 0x2BADB002,
  EBX = multiboot information structure, IF and VM clear.

The hidden segment state is derived from the very descriptors written to the
boot GDT (Firecracker arch/x86_64/gdt.rs, kvm_segment_from_gdt), so the
registers KVM's VM-entry checks see (SDM Vol. 3 28.3.1.2) and what an emulator
reads back from the GDT always agree.

    setup_long_mode(memory)                       # GDT + identity page tables in guest RAM
    regs, sregs = linux_64bit_state(entry, layout.ZERO_PAGE_START)
"""

from __future__ import annotations

import struct
from dataclasses import replace

from xvm.arch.x86 import layout
from xvm.arch.x86.regs import (
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_FIXED,
    DescriptorTable,
    Regs,
    Segment,
    SpecialRegs,
)
from xvm.memory.guest_memory import GuestMemory

#: Selectors the Linux boot protocol requires (arch/x86/include/asm/segment.h).
BOOT_CS = 0x10
BOOT_DS = 0x18
#: Selector of the boot TSS (TR must hold a busy TSS for VM entry, SDM 28.3.1.2).
BOOT_TSS = 0x20

#: Page-table entry bits (SDM Vol. 3 4.5).
PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PDE_PAGE_SIZE = 1 << 7  # 2 MiB page in a page directory

#: Slots in the boot GDT (8 bytes each; the 64-bit TSS descriptor takes two).
_GDT_SLOTS = 6


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """An 8-byte segment descriptor (SDM Vol. 3 3.4.5).

    `flags` packs access byte (bits 0-7: type, S, DPL, P) and the high nibble
    (bits 12-15: AVL, L, D/B, G) as in Linux's GDT_ENTRY() macro.
    """
    return (
        ((base & 0xFF000000) << 32)
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0x000F0000) << 32)
        | ((base & 0x00FFFFFF) << 16)
        | (limit & 0x0000FFFF)
    )


# Flat 4 GiB segments, access byte "accessed" set so the CPU never writes it back.
_CODE64 = gdt_entry(0xA09B, 0, 0xFFFFF)  # P, S, execute/read, L=1, G=1
_CODE32 = gdt_entry(0xC09B, 0, 0xFFFFF)  # P, S, execute/read, D=1, G=1
_DATA = gdt_entry(0xC093, 0, 0xFFFFF)  # P, S, read/write, B=1, G=1
_TSS = gdt_entry(0x808B, 0, 0xFFFFF)  # P, busy 32/64-bit TSS, G=1

#: Boot GDT contents for each entry mode; slot index = selector >> 3.
GDT_64BIT = (0, 0, _CODE64, _DATA, _TSS, 0)  # slot 5: upper half of the 16-byte TSS descriptor
GDT_32BIT = (0, 0, _CODE32, _DATA, _TSS, 0)


def segment_from_descriptor(entry: int, selector: int) -> Segment:
    """The hidden descriptor cache a segment load of `selector` would fill from `entry`."""
    g = (entry >> 55) & 1
    limit = ((entry >> 32) & 0x000F0000) | (entry & 0xFFFF)
    if g:
        limit = (limit << 12) | 0xFFF  # the cache holds the byte-granular limit
    present = bool((entry >> 47) & 1)
    return Segment(
        base=((entry >> 32) & 0xFF000000) | ((entry >> 16) & 0x00FFFFFF),
        limit=limit,
        selector=selector,
        type_=(entry >> 40) & 0xF,
        present=present,
        dpl=(entry >> 45) & 3,
        db=(entry >> 54) & 1,
        s=(entry >> 44) & 1,
        l=(entry >> 53) & 1,
        g=g,
        avl=(entry >> 52) & 1,
        unusable=not present,
    )


def _write_gdt(memory: GuestMemory, gdt: tuple[int, ...]) -> None:
    memory.write(layout.BOOT_GDT_START, struct.pack(f"<{len(gdt)}Q", *gdt))


def write_identity_page_tables(memory: GuestMemory) -> None:
    """Identity-map the first BOOT_PD_COUNT GiB with 2 MiB pages (PML4 -> PDPT -> PDs)."""
    memory.write(layout.PML4_START, struct.pack("<Q", layout.PDPTE_START | PTE_PRESENT | PTE_WRITABLE))
    pdpt = [layout.PDE_START + i * layout.PAGE_SIZE | PTE_PRESENT | PTE_WRITABLE for i in range(layout.BOOT_PD_COUNT)]
    memory.write(layout.PDPTE_START, struct.pack(f"<{len(pdpt)}Q", *pdpt))
    pages = 512 * layout.BOOT_PD_COUNT
    pde = [(i << 21) | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE for i in range(pages)]
    memory.write(layout.PDE_START, struct.pack(f"<{pages}Q", *pde))


def setup_long_mode(memory: GuestMemory) -> None:
    """Write what linux_64bit_state() points at: the 64-bit boot GDT and the identity map."""
    _write_gdt(memory, GDT_64BIT)
    write_identity_page_tables(memory)


def setup_protected_mode(memory: GuestMemory) -> None:
    """Write what protected_32bit_state() points at: the 32-bit boot GDT."""
    _write_gdt(memory, GDT_32BIT)


def _flat_sregs(gdt: tuple[int, ...]) -> SpecialRegs:
    """Segment and descriptor-table registers loaded from `gdt` as a boot loader would leave them."""
    data = segment_from_descriptor(gdt[BOOT_DS >> 3], BOOT_DS)
    sregs = SpecialRegs(
        cs=segment_from_descriptor(gdt[BOOT_CS >> 3], BOOT_CS),
        ds=data,
        es=replace(data),
        fs=replace(data),
        gs=replace(data),
        ss=replace(data),
        tr=segment_from_descriptor(gdt[BOOT_TSS >> 3], BOOT_TSS),
        gdt=DescriptorTable(base=layout.BOOT_GDT_START, limit=len(gdt) * 8 - 1),
        # Limit 0: no usable gate, so any exception before the kernel's own IDT is a
        # triple fault the VMM reports, not a jump through garbage.
        idt=DescriptorTable(base=layout.BOOT_IDT_START, limit=0),
    )
    # LDTR null: the VM-entry checks want it unusable (SDM 28.3.1.2).
    sregs.ldt = Segment(selector=0, limit=0, type_=2, s=0, present=False, unusable=True)
    return sregs


def linux_64bit_state(entry: int, zero_page: int) -> tuple[Regs, SpecialRegs]:
    """BSP registers for the 64-bit Linux boot protocol (needs setup_long_mode())."""
    regs = Regs(
        rip=entry,
        rsi=zero_page,
        rsp=layout.BOOT_STACK_POINTER,
        rbp=layout.BOOT_STACK_POINTER,
        rflags=RFLAGS_FIXED,
    )
    sregs = _flat_sregs(GDT_64BIT)
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG
    sregs.cr3 = layout.PML4_START
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA
    return regs, sregs


def protected_32bit_state(entry: int, eax: int, ebx: int) -> tuple[Regs, SpecialRegs]:
    """BSP registers for a 32-bit protected-mode entry, paging off (needs setup_protected_mode())."""
    regs = Regs(rip=entry, rax=eax, rbx=ebx, rflags=RFLAGS_FIXED)
    sregs = _flat_sregs(GDT_32BIT)
    sregs.cr0 = CR0_PE | CR0_ET
    return regs, sregs
