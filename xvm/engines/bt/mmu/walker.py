"""Guest page-table walker: 32-bit, PAE and 4-level paging (SDM Vol. 3 ch. 4).

The walker is the TLB's miss handler. It reads the guest's paging structures
from guest-physical memory, checks present/reserved/permission bits, writes
the accessed and dirty flags back the way hardware does, and returns what the
TLB needs to cache the translation of one 4 KiB linear page. It never caches
anything itself, except the four PAE PDPTE registers, which hardware loads at
MOV CR3 time (SDM Vol. 3 4.4.1).

Choices where the SDM leaves room, following Bochs `cpu/paging.cc`:

* A/D flags are written only when the whole walk succeeds (permissions
  included); a faulting access leaves the paging structures untouched.
  Only the low byte of an entry is rewritten (A = bit 5, D = bit 6), so the
  same code serves 4- and 8-byte entries.
* A paging-structure entry outside guest RAM reads as 0 (not present), so the
  access raises #PF instead of reading device registers or host memory.
* MAXPHYADDR is `MAXPHYADDR` (40 bits): entry bits above it are reserved and
  raise #PF with RSVD set. CPUID leaf 0x80000008 must report the same width.
* SMAP and protection keys are not implemented (CPUID must not offer them);
  SMEP is.
"""

from __future__ import annotations

from typing import Callable, Optional

from xvm.arch.x86.regs import CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, CR4_SMEP, EFER_LMA, EFER_NXE
from xvm.engines.bt.faults import (
    PF,
    PF_FETCH,
    PF_PRESENT,
    PF_RSVD,
    PF_USER,
    PF_WRITE,
    GuestFault,
    general_protection,
)
from xvm.engines.bt.state import CpuState

ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC = 0, 1, 2

#: Physical-address width this CPU model reports (CPUID 0x80000008 EAX[7:0]).
MAXPHYADDR = 40

#: Paging modes (SDM Vol. 3 4.1.1); PAGING_NONE means linear == physical.
PAGING_NONE, PAGING_32, PAGING_PAE, PAGING_4LEVEL = range(4)

# Paging-structure entry bits (SDM Vol. 3 Tables 4-4..4-20).
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_G = 1 << 8
PTE_XD = 1 << 63

#: Bits M-1:12 of an entry: the physical address of the next table or page.
ADDR_MASK = ((1 << MAXPHYADDR) - 1) & ~0xFFF
#: Bits 51:M of a 4-level entry, and 62:M of a PAE PDE/PTE, are reserved.
_RSVD_HIGH_4LEVEL = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)
_RSVD_HIGH_PAE = ((1 << 63) - 1) & ~((1 << MAXPHYADDR) - 1)
#: PAE PDPTE register: bits 2:1 and 8:5 are reserved too (SDM Table 4-8).
_RSVD_PAE_PDPTE = ((1 << 64) - 1) & ~((1 << MAXPHYADDR) - 1) | 0x1E6
#: A 32-bit PDE mapping 4 MiB: bit 21 is reserved when MAXPHYADDR is 40 (SDM Table 4-4).
_RSVD_PDE_4M = 1 << 21

#: What a walk reports: (physical base of the 4 KiB page, global, page shift,
#: physical addresses of the entries read, for shadow tracking).
Translation = tuple


class PageWalker:
    """Translate one linear address by walking the guest's page tables.

    `read_entry(paddr, width)` returns an entry (0 outside RAM);
    `set_bits(paddr, byte)` ORs `byte` into the entry's low byte in RAM.
    """

    def __init__(self, cpu: CpuState, read_entry: Callable[[int, int], int],
                 set_bits: Callable[[int, int], None]) -> None:
        self.cpu = cpu
        self._read_entry = read_entry
        self._set_bits = set_bits
        self.paging = PAGING_NONE
        self._pdptes: list[int] = [0, 0, 0, 0]
        self._pdpte_cr3: Optional[int] = None
        self.configure()

    def configure(self) -> None:
        """Latch the paging mode and the control bits that affect permissions."""
        cpu = self.cpu
        if not cpu.cr0 & CR0_PG:
            self.paging = PAGING_NONE
        elif not cpu.cr4 & CR4_PAE:
            self.paging = PAGING_32
        elif cpu.efer & EFER_LMA:
            self.paging = PAGING_4LEVEL
        else:
            self.paging = PAGING_PAE
        self.wp = bool(cpu.cr0 & CR0_WP)
        self.pse = bool(cpu.cr4 & CR4_PSE)
        self.pge = bool(cpu.cr4 & CR4_PGE)
        self.smep = bool(cpu.cr4 & CR4_SMEP)
        self.nxe = bool(cpu.efer & EFER_NXE) and self.paging != PAGING_32
        # I/D is reported for fetches only with SMEP or PAE/4-level + NXE (SDM Vol. 3 4.7).
        self.fetch_code = PF_FETCH if (self.smep or self.nxe) else 0
        self._pdpte_cr3 = None

    def load_pdptes(self) -> None:
        """Load the PAE PDPTE registers from CR3 (done by MOV CR3 on hardware)."""
        base = self.cpu.cr3 & 0xFFFFFFE0
        self._pdptes = [self._read_entry(base + 8 * i, 8) for i in range(4)]
        self._pdpte_cr3 = self.cpu.cr3

    def walk(self, linear: int, access: int, user: bool) -> Translation:
        """Translate `linear`; raise GuestFault(#PF) with the SDM error code."""
        paging = self.paging
        if paging == PAGING_4LEVEL:
            return self._walk_4level(linear, access, user)
        if paging == PAGING_PAE:
            return self._walk_pae(linear & 0xFFFFFFFF, access, user)
        return self._walk_32(linear & 0xFFFFFFFF, access, user)

    # --- the three formats ----------------------------------------------------
    def _walk_32(self, linear: int, access: int, user: bool) -> Translation:
        pde_addr = (self.cpu.cr3 & 0xFFFFF000) | ((linear >> 20) & 0xFFC)
        pde = self._read_entry(pde_addr, 4)
        if not pde & PTE_P:
            raise self._fault(linear, access, user, 0)
        if pde & PTE_PS and self.pse:
            if pde & _RSVD_PDE_4M:
                raise self._fault(linear, access, user, PF_PRESENT | PF_RSVD)
            frame = (pde & 0xFFC00000) | ((pde >> 13) & 0xFF) << 32
            return self._finish(linear, access, user, (pde_addr,), (pde,), frame, 22, pde & PTE_RW,
                                pde & PTE_US, 0)
        pte_addr = (pde & 0xFFFFF000) | ((linear >> 10) & 0xFFC)
        pte = self._read_entry(pte_addr, 4)
        if not pte & PTE_P:
            raise self._fault(linear, access, user, 0)
        return self._finish(linear, access, user, (pde_addr, pte_addr), (pde, pte), pte & 0xFFFFF000, 12,
                            pde & pte & PTE_RW, pde & pte & PTE_US, 0)

    def _walk_pae(self, linear: int, access: int, user: bool) -> Translation:
        if self._pdpte_cr3 != self.cpu.cr3:
            self.load_pdptes()
        pdpte = self._pdptes[linear >> 30]
        if not pdpte & PTE_P:
            raise self._fault(linear, access, user, 0)
        if pdpte & _RSVD_PAE_PDPTE:
            raise self._fault(linear, access, user, PF_PRESENT | PF_RSVD)
        return self._walk_tables(linear, access, user, pdpte & ADDR_MASK, (21, 12),
                                 _RSVD_HIGH_PAE, (), (), PTE_RW | PTE_US, 0)

    def _walk_4level(self, linear: int, access: int, user: bool) -> Translation:
        # Bits 63:47 must all equal bit 47; segmentation checks this first on
        # hardware (#GP/#SS), this is the MMU's own guard.
        top = linear >> 47
        if top and top != 0x1FFFF:
            raise general_protection(0)
        return self._walk_tables(linear, access, user, self.cpu.cr3 & ADDR_MASK, (39, 30, 21, 12),
                                 _RSVD_HIGH_4LEVEL, (), (), PTE_RW | PTE_US, 0)

    def _walk_tables(self, linear: int, access: int, user: bool, table: int, shifts: tuple,
                     rsvd_high: int, addrs: tuple, values: tuple, rw_us: int, xd: int) -> Translation:
        """Walk 8-byte entries at `shifts` (PML4/PDPT/PD/PT as present)."""
        rsvd = rsvd_high if self.nxe else rsvd_high | PTE_XD
        last = len(shifts) - 1
        for level, shift in enumerate(shifts):
            addr = table | ((linear >> shift) & 0x1FF) << 3
            entry = self._read_entry(addr, 8)
            if not entry & PTE_P:
                raise self._fault(linear, access, user, 0)
            bad = rsvd
            if shift == 39:
                bad |= PTE_PS  # PS is reserved in a PML4E
            elif level != last and entry & PTE_PS:
                # 1 GiB / 2 MiB page: address bits below the page size are reserved.
                bad |= ((1 << shift) - 1) & ~0x1FFF
            if entry & bad:
                raise self._fault(linear, access, user, PF_PRESENT | PF_RSVD)
            addrs += (addr,)
            values += (entry,)
            rw_us &= entry
            xd |= entry
            if level == last or entry & PTE_PS:
                frame = entry & ADDR_MASK & ~((1 << shift) - 1)
                return self._finish(linear, access, user, addrs, values, frame, shift,
                                    rw_us & PTE_RW, rw_us & PTE_US, xd & PTE_XD)
            table = entry & ADDR_MASK
        raise AssertionError("unreachable: the last level always returns")

    # --- permission check and A/D write-back -----------------------------------
    def _finish(self, linear: int, access: int, user: bool, addrs: tuple, values: tuple, frame: int,
                shift: int, rw: int, us: int, xd: int) -> Translation:
        """Apply SDM Vol. 3 4.6 access rights, then set A (and D) like hardware."""
        if access == ACCESS_EXEC:
            ok = not (xd and self.nxe) and (us if user else not (us and self.smep))
        elif access == ACCESS_WRITE:
            ok = (us and rw) if user else (rw or not self.wp)
        else:
            ok = us or not user
        if not ok:
            raise self._fault(linear, access, user, PF_PRESENT)
        set_bits = self._set_bits
        last = len(addrs) - 1
        for i, addr in enumerate(addrs):
            need = PTE_A | PTE_D if (i == last and access == ACCESS_WRITE) else PTE_A
            if values[i] & need != need:
                set_bits(addr, need)
        page = frame | (linear & ((1 << shift) - 1) & ~0xFFF)
        return page, bool(self.pge and values[last] & PTE_G), shift, addrs

    def _fault(self, linear: int, access: int, user: bool, code: int) -> GuestFault:
        if access == ACCESS_WRITE:
            code |= PF_WRITE
        elif access == ACCESS_EXEC:
            code |= self.fetch_code
        if user:
            code |= PF_USER
        return GuestFault(PF, code, linear)
