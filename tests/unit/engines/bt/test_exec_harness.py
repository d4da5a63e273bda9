"""A small machine for interpreter tests: sparse RAM behind a fake MMU, flat segments per mode.

Imported by the other test_exec*/test_alu* files (pytest puts this directory
on sys.path); it holds no tests of its own beyond a smoke test of itself.
"""

from __future__ import annotations

from xvm.arch.x86.regs import CR0_PE, CR0_PG, CR4_OSFXSR, CR4_PAE, EFER_LMA, EFER_LME
from xvm.engines.bt.cpu import execute_one
from xvm.engines.bt.faults import GuestFault, page_fault
from xvm.engines.bt.state import CS, CpuState, SegmentCache

PAGE = 4096
CODE = 0x10000
CODE16 = 0x1000  # within a real-mode CS limit


class SparseMmu:
    """Linear == physical; pages in `absent` raise #PF; writes to `readonly` pages raise #PF."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.absent: set[int] = set()
        self.readonly: set[int] = set()
        self.on_code_write = None
        self.mode_changes = 0
        self.invalidated: list[int] = []

    def _page(self, linear: int, write: bool, user: bool, fetch: bool = False) -> bytearray:
        pn = linear >> 12
        if pn in self.absent or (write and pn in self.readonly):
            code = (1 if pn not in self.absent else 0) | (2 if write else 0) | (4 if user else 0) | (16 if fetch else 0)
            raise page_fault(linear, code)
        return self.pages.setdefault(pn, bytearray(PAGE))

    def read_bytes(self, linear: int, n: int, user: bool, fetch: bool = False) -> bytes:
        out = bytearray()
        while n:
            page = self._page(linear, False, user, fetch)
            off = linear & (PAGE - 1)
            chunk = min(n, PAGE - off)
            out += page[off:off + chunk]
            linear += chunk
            n -= chunk
        return bytes(out)

    def write_bytes(self, linear: int, data: bytes, user: bool) -> None:
        # Check every page first: a faulting multi-page write must not be half done.
        for addr in range(linear & ~(PAGE - 1), linear + len(data), PAGE):
            self._page(max(addr, linear), True, user)
        for i, b in enumerate(data):
            self._page(linear + i, True, user)[(linear + i) & (PAGE - 1)] = b

    def read(self, linear: int, size: int, user: bool) -> int:
        return int.from_bytes(self.read_bytes(linear, size, user), "little")

    def write(self, linear: int, size: int, value: int, user: bool) -> None:
        self.write_bytes(linear, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"), user)

    def fetch_bytes(self, linear: int, n: int, user: bool) -> bytes:
        return self.read_bytes(linear, n, user, fetch=True)

    def translate(self, linear: int, access: int, user: bool) -> int:
        self._page(linear, access == 1, user, access == 2)
        return linear

    def mode_changed(self) -> None:
        self.mode_changes += 1

    def flush(self, include_global: bool = True) -> None:
        pass

    def invlpg(self, linear: int) -> None:
        self.invalidated.append(linear)

    def watch_code_page(self, ppn: int) -> None:
        pass


class PortLog:
    """Port I/O that records writes and answers reads from `inputs` (default all ones)."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []
        self.inputs: dict[int, int] = {}

    def read(self, port: int, size: int) -> int:
        return self.inputs.get(port, (1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))


def flat(code: bool, bits: int, dpl: int = 0) -> SegmentCache:
    access = 0x80 | (dpl << 5) | 0x10 | (0x0B if code else 0x03)
    flags = 0x8 | (0x2 if bits == 64 and code else 0x4 if bits != 16 else 0)
    return SegmentCache(dpl, 0, 0xFFFFFFFF, access, flags)


def make_cpu(bits: int, cpl: int = 0) -> CpuState:
    """A CPU in 16-bit real mode, 32-bit protected mode or 64-bit long mode with flat segments."""
    cpu = CpuState()
    if bits == 16:
        cpu.cr0 = 0x10
        for i in range(6):
            cpu.segs[i] = SegmentCache(0, 0, 0xFFFF, 0x9B if i == CS else 0x93, 0)
    else:
        cpu.cr0 = CR0_PE | 0x10 | (CR0_PG if bits == 64 else 0)
        cpu.cr4 = CR4_OSFXSR | (CR4_PAE if bits == 64 else 0)
        cpu.efer = EFER_LME | EFER_LMA if bits == 64 else 0
        for i in range(6):
            cpu.segs[i] = flat(i == CS, bits, cpl)
            cpu.segs[i].selector = (8 * (i + 1)) | cpl
    cpu.refresh_mode()
    cpu.cpl = cpl
    cpu.rip = CODE if bits != 16 else CODE16
    cpu.regs[4] = 0x8000
    return cpu


def run_code(cpu: CpuState, mmu: SparseMmu, code: bytes, io=None, max_steps: int = 1000) -> None:
    """Place `code` at CS:RIP and execute until RIP leaves it (or HLT)."""
    start = cpu.rip
    mmu.write_bytes(start, code, False)
    io = io or PortLog()
    for _ in range(max_steps):
        if cpu.halted or not start <= cpu.rip < start + len(code):
            return
        execute_one(cpu, mmu, io)
    raise AssertionError("code did not finish")


def fault_of(cpu: CpuState, mmu: SparseMmu, code: bytes, io=None) -> GuestFault:
    """Execute one instruction that must fault; return the fault."""
    mmu.write_bytes(cpu.rip, code, False)
    try:
        execute_one(cpu, mmu, io or PortLog())
    except GuestFault as fault:
        return fault
    raise AssertionError("no fault")


def test_harness_runs_a_nop():
    cpu = make_cpu(64)
    run_code(cpu, SparseMmu(), b"\x90")
    assert cpu.rip == CODE + 1 and cpu.icount == 1
