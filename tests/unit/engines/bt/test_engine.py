"""The bt engine's run loop: device exits, HLT, kick, interrupts, virtual time, faults, determinism.

Guests are a few lines of nasm assembled into a temporary directory and
written into guest RAM; the machine around them is made of fakes (an exit
handler that records accesses, an interrupt source, a timer).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Optional

import pytest

from xvm.arch.x86.regs import CR0_ET, CR0_PE, Regs, Segment, SpecialRegs
from xvm.devices.clock import VirtualClock
from xvm.devices.legacy.interrupts import InterruptRouter
from xvm.engines.base import Hlt, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, Shutdown
from xvm.engines.bt.clock import PAUSE_NS
from xvm.engines.bt.engine import BtEngine, BtVcpu
from xvm.memory.guest_memory import GuestMemory

pytestmark = pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm is needed to assemble test guests")

RAM = 1 << 20
CODE = 0x1000


def assemble(tmp_path, source: str, bits: int = 16) -> bytes:
    src = tmp_path / "guest.asm"
    out = tmp_path / "guest.bin"
    src.write_text(f"bits {bits}\norg {CODE:#x}\n{source}\n")
    subprocess.run(["nasm", "-f", "bin", "-o", str(out), str(src)], check=True, capture_output=True)
    return out.read_bytes()


class FakeIo:
    """The machine's exit dispatcher: records every access; IN and MMIO reads return `reads`."""

    def __init__(self) -> None:
        self.exits: list = []
        self.reads: dict = {}
        #: Called with each IoOut (a device doing something on a write).
        self.on_out = None

    def __call__(self, exit_) -> None:
        if isinstance(exit_, IoOut) and self.on_out is not None:
            self.on_out(exit_)
        if isinstance(exit_, IoIn):
            exit_.data[:] = self.reads.get(exit_.port, 0xFF).to_bytes(exit_.size, "little")
            self.exits.append(("in", exit_.port, exit_.size))
        elif isinstance(exit_, IoOut):
            self.exits.append(("out", exit_.port, bytes(exit_.data)))
        elif isinstance(exit_, MmioRead):
            exit_.data[:] = self.reads.get(exit_.address, 0).to_bytes(len(exit_.data), "little")
            self.exits.append(("mmio-read", exit_.address, len(exit_.data)))
        elif isinstance(exit_, MmioWrite):
            self.exits.append(("mmio-write", exit_.address, bytes(exit_.data)))


class FakeInterrupts:
    """An interrupt controller with one pending vector (until acknowledged), and latched INIT/SIPI."""

    def __init__(self) -> None:
        self.vector: Optional[int] = None
        self.acknowledged: list = []
        self.sipi: dict = {}
        self.nmis = 0

    def take_init(self, cpu: int) -> bool:
        return False

    def take_sipi(self, cpu: int) -> Optional[int]:
        return self.sipi.pop(cpu, None)

    def take_nmi(self, cpu: int) -> bool:
        taken = self.nmis > 0
        self.nmis -= taken
        return taken

    def pending(self, cpu: int) -> bool:
        return self.vector is not None

    def acknowledge(self, cpu: int) -> int:
        vector, self.vector = self.vector, None
        self.acknowledged.append(vector)
        return vector


class FakeTimers:
    """A one-shot timer: at `deadline` it raises `vector` on the interrupt source."""

    def __init__(self, interrupts: FakeInterrupts, deadline: Optional[int] = None, vector: int = 0x20) -> None:
        self.interrupts = interrupts
        self.deadline = deadline
        self.vector = vector
        self.ticks: list = []

    def tick(self, now_ns: int) -> None:
        self.ticks.append(now_ns)
        if self.deadline is not None and now_ns >= self.deadline:
            self.deadline = None
            self.interrupts.vector = self.vector

    def next_deadline(self) -> Optional[int]:
        return self.deadline


class Rig:
    """One VM with one vCPU, a guest at CODE, and the fakes around it."""

    def __init__(self, code: bytes, protected: bool = False, deadline: Optional[int] = None,
                 trace: bool = False, cpus: int = 1) -> None:
        self.memory = GuestMemory.allocate(RAM)
        self.memory.write(CODE, code)
        self.io = FakeIo()
        self.interrupts = FakeInterrupts()
        self.timers = FakeTimers(self.interrupts, deadline)
        self.trace: list = []
        self.vm = BtEngine().create_vm(self.memory, cpus)
        self.vm.connect(self.io, self.interrupts, lambda irq: None, None, self.timers,
                        trace=self.trace.append if trace else None)
        self.vcpu: BtVcpu = self.vm.create_vcpu(0)
        sregs = SpecialRegs()
        if protected:
            code_seg = Segment(base=0, limit=0xFFFFFFFF, selector=0x08, type_=0xB, db=1, g=1)
            data = Segment(base=0, limit=0xFFFFFFFF, selector=0x10, type_=0x3, db=1, g=1)
            sregs.cr0 = CR0_PE | CR0_ET
        else:
            code_seg = Segment(base=0, limit=0xFFFF, selector=0, type_=0xB)
            data = Segment(base=0, limit=0xFFFF, selector=0, type_=0x3)
            sregs.cr0 = CR0_ET
        sregs.cs = code_seg
        sregs.ds = sregs.es = sregs.ss = sregs.fs = sregs.gs = data
        sregs.idt.base, sregs.idt.limit = 0, 0x3FF if not protected else 0
        self.vcpu.set_sregs(sregs)
        self.vcpu.set_regs(Regs(rip=CODE, rsp=0x8000, rflags=0x2))

    def run(self, limit: float = 10.0):
        """run() until an exit other than Interrupted-by-nobody (bounded by `limit` seconds)."""
        timer = threading.Timer(limit, self.vcpu.kick)
        timer.start()
        try:
            return self.vcpu.run()
        finally:
            timer.cancel()

    def close(self) -> None:
        self.vm.close()
        self.memory.close()


@pytest.fixture
def rig_factory(tmp_path):
    rigs = []

    def make(source: str, bits: int = 16, **kwargs) -> Rig:
        rig = Rig(assemble(tmp_path, source, bits), protected=bits == 32, **kwargs)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def test_out_reaches_the_exit_handler_and_hlt_with_if0_stops(rig_factory):
    rig = rig_factory("mov al, 'A'\nout 0xe9, al\nmov dx, 0x3f8\nmov ax, 0x4243\nout dx, ax\ncli\nhlt")
    assert isinstance(rig.run(), Hlt)
    assert rig.io.exits == [("out", 0xE9, b"A"), ("out", 0x3F8, b"CB")]
    assert rig.vcpu.stats["exits_to_device_emulation"] == 2


def test_in_returns_the_device_value(rig_factory):
    rig = rig_factory("in al, 0x60\nmov [0x500], al\nmov dx, 0x71\nin eax, dx\nmov [0x504], eax\nhlt")
    rig.io.reads = {0x60: 0x5A, 0x71: 0x12345678}
    assert isinstance(rig.run(), Hlt)
    assert rig.memory.read_u8(0x500) == 0x5A
    assert rig.memory.read_u32(0x504) == 0x12345678


def test_mmio_loads_and_stores_reach_the_handler(rig_factory):
    rig = rig_factory("mov eax, [0xfee00030]\nmov ebx, 0xcafe\nmov [0xfec00010], ebx\nmov [0x600], eax\nhlt",
                      bits=32)
    rig.io.reads = {0xFEE00030: 0x50014}
    assert isinstance(rig.run(), Hlt)
    assert ("mmio-read", 0xFEE00030, 4) in rig.io.exits
    assert ("mmio-write", 0xFEC00010, (0xCAFE).to_bytes(4, "little")) in rig.io.exits
    assert rig.memory.read_u32(0x600) == 0x50014


def test_kick_from_another_thread_interrupts_a_spinning_guest(rig_factory):
    rig = rig_factory("spin: jmp spin")
    threading.Timer(0.2, rig.vcpu.kick).start()
    started = time.monotonic()
    assert isinstance(rig.vcpu.run(), Interrupted)
    assert time.monotonic() - started < 5
    assert rig.vcpu.cpu.icount > 100


IVT_HANDLER = """
    ; vector 0x20 -> handler: record the phase the guest was in
    mov word [0x20*4], handler
    mov word [0x20*4+2], 0
"""


def test_external_interrupt_only_at_a_boundary_with_if1(rig_factory):
    rig = rig_factory(IVT_HANDLER + """
    cli
    mov byte [0x600], 1
    mov byte [0x600], 2
    sti
    nop                 ; the STI shadow: the interrupt comes after this
    mov byte [0x600], 3
    cli
    hlt
handler:
    mov al, [0x600]
    mov [0x601], al
    iret
""")
    rig.interrupts.vector = 0x20
    assert isinstance(rig.run(), Hlt)
    assert rig.interrupts.acknowledged == [0x20]
    assert rig.memory.read_u8(0x601) == 2
    assert rig.memory.read_u8(0x600) == 3


def test_a_second_nmi_waits_for_the_first_handlers_iret(rig_factory):
    rig = rig_factory("""
    jmp short main
nmi:                    ; at CODE + 2, in the IVT before the guest starts
    push cx
    inc byte [0x600]    ; nesting depth
    mov al, [0x600]
    cmp al, [0x601]
    jbe counted
    mov [0x601], al     ; deepest nesting seen
counted:
    inc byte [0x602]    ; handler entries
    mov cx, 10000       ; long enough for several interrupt polls
handler_spin:
    loop handler_spin
    dec byte [0x600]
    pop cx
    iret
main:
    mov cx, 10000
spin:
    loop spin
    cli
    hlt
""")
    rig.memory.write(2 * 4, (CODE + 2).to_bytes(2, "little") + bytes(2))
    rig.interrupts.nmis = 2
    assert isinstance(rig.run(), Hlt)
    assert rig.memory.read_u8(0x602) == 2
    assert rig.memory.read_u8(0x601) == 1


def test_timer_deadline_fires_in_virtual_time(rig_factory):
    rig = rig_factory(IVT_HANDLER + """
    sti
    mov cx, 5000
spin:
    dec cx
    jnz spin
    cli
    hlt
handler:
    mov eax, [0x700]    ; not used: the test reads the tick times
    inc word [0x610]
    iret
""", deadline=3000)
    assert isinstance(rig.run(), Hlt)
    assert rig.timers.ticks and 3000 <= rig.timers.ticks[0] < 3000 + 200
    assert rig.memory.read_u16(0x610) == 1


def test_hlt_with_if1_skips_virtual_time_to_the_deadline(rig_factory):
    rig = rig_factory(IVT_HANDLER + """
    sti
    hlt                 ; idle until the timer: virtual time jumps
    cli
    hlt
handler:
    mov byte [0x620], 1
    iret
""", deadline=5_000_000_000)
    started = time.monotonic()
    assert isinstance(rig.run(), Hlt)
    assert time.monotonic() - started < 5
    assert rig.memory.read_u8(0x620) == 1
    assert rig.vm.clock().now_ns() >= 5_000_000_000
    assert rig.vcpu.cpu.icount < 100
    assert rig.vcpu.stats["idle_skips"] == 1


def test_triple_fault_stops_the_vm(rig_factory):
    rig = rig_factory("ud2", bits=32)   # no IDT: #UD -> #GP -> #DF -> shutdown
    exit_ = rig.run()
    assert isinstance(exit_, Shutdown)
    assert exit_.reason == "triple fault"


LOOP = IVT_HANDLER + """
    mov cx, 300
    xor bx, bx
    xor si, si
top:
    add bx, cx
    mov [si+0x700], bx
    add si, 2
    and si, 0xff
    loop top
    sti
    hlt
    cli
    hlt
handler:
    inc byte [0x630]
    iret
"""


def _final_state(rig: Rig) -> tuple:
    regs = rig.vcpu.get_regs()
    return regs, rig.vcpu.cpu.icount, rig.memory.read(0, 0x2000)


def test_runs_are_deterministic(rig_factory):
    states = []
    traces = []
    for _ in range(2):
        rig = rig_factory(LOOP, deadline=2500, trace=True)
        assert isinstance(rig.run(), Hlt)
        states.append(_final_state(rig))
        traces.append(rig.trace)
    assert states[0] == states[1]
    assert traces[0] == traces[1]
    assert len(traces[0]) == states[0][1]
    assert "loop" in "\n".join(traces[0])


def test_translated_runs_are_deterministic_too(rig_factory):
    states = []
    for _ in range(2):
        rig = rig_factory(LOOP, deadline=2500)
        assert isinstance(rig.run(), Hlt)
        states.append(_final_state(rig))
        assert rig.memory.read_u8(0x630) == 1          # the timer interrupt, taken at the HLT
    assert states[0] == states[1]


def test_host_clock_moves_the_tsc_with_host_time(rig_factory):
    rig = rig_factory("rdtsc\nmov [0x900], eax\nmov [0x904], edx\nhlt")
    rig.vm.connect(rig.io, rig.interrupts, lambda irq: None, None, rig.timers, clock_mode="host")
    time.sleep(0.01)
    assert isinstance(rig.run(), Hlt)
    tsc = rig.memory.read_u32(0x900) | rig.memory.read_u32(0x904) << 32
    assert tsc >= 10_000_000


def test_translated_and_interpreted_runs_end_in_the_same_state(rig_factory):
    interpreted = rig_factory(LOOP, trace=True)
    translated = rig_factory(LOOP)
    for rig in (interpreted, translated):
        rig.interrupts.vector = None
        rig.timers.deadline = 1_000_000
        assert isinstance(rig.run(), Hlt)
    assert _final_state(interpreted) == _final_state(translated)
    stats = translated.vcpu.stats
    assert stats["blocks_translated"] >= 1
    assert stats["cache_hits"] > 250
    assert stats["efficiency"] > 0.9
    assert interpreted.vcpu.stats["efficiency"] == 0


def test_self_modifying_code_inside_the_running_block_is_retranslated(rig_factory):
    rig = rig_factory("""
    mov cx, 10
    xor bx, bx
top:
    add bx, 1               ; its immediate is patched to 2 after the first pass
patch equ $ - 1
    mov byte [patch], 2
    loop top
    cli
    hlt
""")
    assert isinstance(rig.run(), Hlt)
    assert rig.vcpu.cpu.regs[3] & 0xFFFF == 1 + 2 * 9
    assert rig.vcpu.stats["invalidations_from_code_writes"] >= 1


def test_data_stores_next_to_code_do_not_invalidate(rig_factory):
    rig = rig_factory("""
    mov cx, 50
top:
    inc word [counter]
    loop top
    cli
    hlt
counter: dw 0
""")
    assert isinstance(rig.run(), Hlt)
    stats = rig.vcpu.stats
    assert stats["invalidations_from_code_writes"] == 0
    assert stats["efficiency"] > 0.8


def test_protected_mode_loop_runs_translated(rig_factory):
    rig = rig_factory("""
    mov ecx, 1000
    xor eax, eax
top:
    lea eax, [eax + ecx*2]
    dec ecx
    jnz top
    mov [0x800], eax
    hlt
""", bits=32)
    assert isinstance(rig.run(), Hlt)
    assert rig.memory.read_u32(0x800) == sum(2 * i for i in range(1, 1001))
    assert rig.vcpu.stats["efficiency"] > 0.95
    assert rig.vcpu.stats["chained"] > 900


FAULT_IN_BLOCK = """
    lgdt [gdtr]
    lidt [idtr]
    mov dword [0xa10], faulting
    mov ebx, 0x18           ; DS: a read-only data segment
    mov ds, ebx
    mov eax, 0x7fffffff
    stc
    add eax, 1              ; OF, SF, AF set: the flags the fault must leave
    push eax                ; RSP moved inside the block
faulting:
    add [0x900], eax        ; reads, sets flags, then the write faults: #GP(0)
    mov ecx, 0x1234
    hlt
handler:                    ; #GP: record error code, EIP and EFLAGS, skip the instruction
    pop dword [es:0xa00]
    mov edx, [es:esp]
    mov [es:0xa04], edx
    mov edx, [es:esp+8]
    mov [es:0xa08], edx
    mov [es:0xa0c], esp
    add dword [es:esp], 6
    iret
align 8
gdt: dq 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF90000000FFFF
gdtr: dw 4*8-1
    dd gdt
idt: times 13 dq 0
    dw (handler - $$ + 0x1000) & 0xFFFF, 0x08, 0x8E00, (handler - $$ + 0x1000) >> 16
idtr: dw 14*8-1
    dd idt
"""


def test_a_fault_inside_a_block_leaves_the_state_of_the_faulting_instruction(rig_factory):
    interpreted = rig_factory(FAULT_IN_BLOCK, bits=32, trace=True)
    translated = rig_factory(FAULT_IN_BLOCK, bits=32)
    for rig in (interpreted, translated):
        rig.memory.write_u32(0x900, 0x11111111)
        assert isinstance(rig.run(), Hlt)
        assert rig.memory.read_u32(0xA00) == 0                       # #GP(0)
        assert rig.memory.read_u32(0x900) == 0x11111111              # the store did not happen
        assert rig.vcpu.cpu.regs[1] == 0x1234                        # resumed after it
    assert translated.memory.read_u32(0xA04) == translated.memory.read_u32(0xA10)   # EIP of the faulting add
    assert translated.memory.read_u32(0xA08) & 0x8D5 == 0x894   # OF SF AF PF of `add eax, 1`, not of the fault
    assert _final_state(interpreted) == _final_state(translated)
    assert translated.vcpu.stats["faults_delivered"] == 1
    assert translated.vcpu.stats["efficiency"] > 0.5



def test_memory_written_by_a_device_drops_stale_translations(rig_factory):
    rig = rig_factory("""
top:
    mov ax, 1
    out 0x80, al            ; a device access: the test's DMA lands here
    cmp ax, 1
    je top
    cli
    hlt
""")

    def dma(exit_):
        if not rig.vm.vcpus[0].stats["invalidations_from_code_writes"]:
            rig.memory.write(CODE + 1, (2).to_bytes(2, "little"))   # mov ax, 1 -> mov ax, 2, behind the MMU
            rig.vm.memory_written(CODE + 1, 2)

    rig.io.on_out = dma
    assert isinstance(rig.run(), Hlt)
    assert rig.vcpu.stats["invalidations_from_code_writes"] >= 1



def test_pause_charges_virtual_time_and_the_tsc_follows(rig_factory):
    rig = rig_factory(IVT_HANDLER + """
    rdtsc
    mov [0x900], eax
    mov cx, 100
spin:
    pause
    loop spin
    rdtsc
    sub eax, [0x900]
    mov [0x904], eax
    sti
    hlt                     ; idle until the timer at 1 ms: the TSC skips with virtual time
    cli
    rdtsc
    mov [0x908], eax
    hlt
handler:
    iret
""", deadline=1_000_000)
    assert isinstance(rig.run(), Hlt)
    assert 100 * PAUSE_NS <= rig.memory.read_u32(0x904) < 100 * PAUSE_NS + 1000
    assert rig.memory.read_u32(0x908) >= 1_000_000
    assert rig.vcpu.cpu.icount < 1000


def test_an_application_processor_starts_at_its_sipi_vector_and_parks(rig_factory):
    rig = rig_factory("mov byte [0x500], 1\nhlt", cpus=2)
    ap = rig.vm.create_vcpu(1)
    rig.interrupts.sipi[1] = CODE >> 12                    # STARTUP IPI: CS = 0x0100, IP = 0
    threading.Timer(0.3, ap.kick).start()
    assert isinstance(ap.run(), Interrupted)               # parked with IF=0: it waits for INIT/NMI
    assert rig.memory.read_u8(0x500) == 1
    assert ap.cpu.segs[1].selector == CODE >> 4 and ap.cpu.halted
    assert rig.vcpu.cpu.icount == 0                        # the BSP did not run


def test_each_vcpu_has_its_apic_id_and_apic_base_reaches_its_lapic():
    memory = GuestMemory.allocate(RAM)
    router = InterruptRouter(2, VirtualClock())
    vm = BtEngine().create_vm(memory, 2)
    try:
        vm.connect(FakeIo(), router, lambda irq: None, None, router)
        bsp, ap = vm.create_vcpu(0), vm.create_vcpu(1)
        assert (bsp.cpu.apic_id, ap.cpu.apic_id) == (0, 1)
        assert bsp.cpu.apic_base_msr.read() == 0xFEE00900 and ap.cpu.apic_base_msr.read() == 0xFEE00800
        ap.cpu.apic_base_msr.write(0xFEE00000)               # WRMSR clearing the global enable
        assert not router.lapics[1].hw_enabled and router.lapics[0].hw_enabled
        ap._reset(sipi_vector=0x10)                           # INIT/SIPI keeps the APIC ID and the hook
        assert ap.cpu.apic_id == 1 and ap.cpu.apic_base_msr.read() == 0xFEE00000
    finally:
        vm.close()
        memory.close()


def test_smp_linux_gets_lpj_so_application_processors_skip_calibration():
    memory = GuestMemory.allocate(RAM)
    try:
        assert BtEngine().create_vm(memory, 1).linux_cmdline_hints() == ""
        # The TSC counts one tick per virtual ns: 1 GHz, so lpj = 1e9 / HZ with HZ taken as 100.
        assert BtEngine().create_vm(memory, 2).linux_cmdline_hints() == "lpj=10000000"
    finally:
        memory.close()
