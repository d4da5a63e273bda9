"""The bt engine: x86 guests run by software, the way the first x86 VMMs did it.

Each vCPU owns a CpuState, a soft MMU and a translation cache. `run()` is the
monitor's loop (SDM Vol. 3 6.6 for where interrupts may be taken):

    while nothing for the machine to see:
        at a boundary: timers due? -> timers.tick(now); NMI/INIT/SIPI latched?;
                       IF=1 and no shadow and an interrupt pending? -> deliver
                       it (INTA: acknowledge)
        halted?       IF=0 -> Hlt() (one vCPU) or wait for NMI/INIT; else skip
                      virtual time to the next timer deadline
        execute       translated blocks (translate/cache.py), chained, until the
                      next boundary; a block ending in a sensitive instruction
                      (emulated by its handler) returns here at once unless
                      the instruction is RESUMABLE (translate/blocks.py) and
                      left the monitor nothing to look at. One
                      instruction goes through the interpreter instead for page
                      crossers, --trace, the instruction after STI/MOV SS, TF=1
        GuestFault    -> deliver through the IVT/IDT (interrupts.deliver_fault)
        TripleFault   -> Shutdown("triple fault")

Boundary work is not done after every block: `_poll_at` holds the
instruction count at which the next boundary check is due — the next timer
deadline in virtual time, at most POLL_INTERVAL instructions ahead, or "now"
after anything that may have changed the answer (a device access, an
interpreted instruction that set IF, a kick). The hot path between blocks is
then one integer comparison.

Device accesses are synchronous: IN/OUT and MMIO build the same IoIn/IoOut/
MmioRead/MmioWrite exits the kvm engine returns, and hand them to the
machine's exit dispatcher in the middle of the instruction.

Time (clock.py) is the boot vCPU's instruction count unless `--clock host`:
HLT skips to the next deadline and PAUSE costs PAUSE_NS, the TSC following
both. Application processors start in wait-for-SIPI and run on their own
threads, taking turns of a slice each (turns.py; SMP runs are not
deterministic).

    vm = BtEngine().create_vm(memory, cpus=1)
    vm.connect(dispatcher.serve_io, router, router.irq_line, router, router)
    vcpu = vm.create_vcpu(0)
    vcpu.set_sregs(sregs); vcpu.set_regs(regs)
    exit_ = vcpu.run()
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

from xvm.arch.x86.regs import RFLAGS_IF, RFLAGS_TF, Regs, SpecialRegs
from xvm.bus.irq import IrqLine, MsiSink
from xvm.engines.base import (
    Hlt,
    Interrupted,
    InterruptSource,
    IoHandler,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    VcpuExit,
)
from xvm.engines.bt import interrupts
from xvm.engines.bt.clock import CLOCK_MODES, NS_PER_INSTRUCTION, PAUSE_NS, TSC_HZ, BtClock
from xvm.engines.bt.cpu import execute_one
from xvm.engines.bt.faults import NMI, GuestFault, TripleFault
from xvm.engines.bt.mmu.softmmu import Mmu
from xvm.engines.bt.ops.system import advance_tsc, read_tsc
from xvm.engines.bt.state import CS, CpuState
from xvm.engines.bt.stats import BtStats
from xvm.engines.bt.trace import trace_line
from xvm.engines.bt.translate.cache import BlockCache
from xvm.engines.bt.turns import SLICE_INSTRUCTIONS, Turns
from xvm.errors import ConfigError, XvmError
from xvm.memory import GuestMemory

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

#: Most instructions between two boundary checks (kick, timers, async interrupts).
POLL_INTERVAL = 4096
#: Longest host sleep while halted with nothing scheduled: the latency of
#: interrupts raised by other threads (console input, I/O backends).
IDLE_WAIT_S = 0.01
_NEVER = 1 << 62


class Timers(Protocol):
    """The timed devices as one object (the InterruptRouter): lazy catch-up (STYLE.md 12)."""

    def tick(self, now_ns: int) -> None: ...

    def next_deadline(self) -> Optional[int]: ...


class _DeviceAccess:
    """Port I/O (the interpreter's `io`) or MMIO (the soft MMU's PhysicalIo) as synchronous exits.

    Each access builds the exit the kvm engine would return (IoIn/IoOut or
    MmioRead/MmioWrite) and hands it to the machine's exit dispatcher.
    """

    __slots__ = ("_handler", "_vcpu", "_load", "_store")

    def __init__(self, handler: IoHandler, vcpu: BtVcpu, load: Callable, store: Callable) -> None:
        self._handler = handler
        self._vcpu = vcpu
        self._load = load
        self._store = store

    def read(self, where: int, size: int) -> int:
        buf = bytearray(size)
        self._handler(self._load(where, size, memoryview(buf)))
        self._vcpu._device_exit()
        return int.from_bytes(buf, "little")

    def write(self, where: int, size: int, value: int) -> None:
        self._handler(self._store(where, size, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")))
        self._vcpu._device_exit()


class _ApicBaseMsr:
    """One vCPU's IA32_APIC_BASE backed by the machine's LAPIC model (CpuState.apic_base_msr)."""

    __slots__ = ("_router", "_index")

    def __init__(self, router, index: int) -> None:
        self._router = router
        self._index = index

    def read(self) -> int:
        return self._router.apic_base(self._index)

    def write(self, value: int) -> None:
        self._router.write_apic_base(self._index, value)


def _port_io(handler: IoHandler, vcpu: BtVcpu) -> _DeviceAccess:
    return _DeviceAccess(handler, vcpu, lambda port, size, data: IoIn(port, size, 1, data),
                         lambda port, size, data: IoOut(port, size, 1, data))


def _mmio(handler: IoHandler, vcpu: BtVcpu) -> _DeviceAccess:
    return _DeviceAccess(handler, vcpu, lambda paddr, size, data: MmioRead(paddr, data),
                         lambda paddr, size, data: MmioWrite(paddr, data))


class BtEngine:
    """Software full virtualization (xvm.engines.base.Engine)."""

    name = "bt"

    def create_vm(self, memory: GuestMemory, cpus: int) -> BtVm:
        if cpus < 1:
            raise ConfigError(f"--cpus {cpus} is invalid: a VM needs at least one vCPU")
        return BtVm(memory, cpus)


class BtVm:
    """One VM on the bt engine (xvm.engines.base.VmBackend).

    There is no in-kernel irqchip: the machine adds xvm's own PIC/PIT/IOAPIC/
    LAPIC/RTC models and wires them in with `connect` before creating devices.
    """

    has_irqchip = False

    def __init__(self, memory: GuestMemory, cpus: int) -> None:
        self.memory = memory
        self.cpus = cpus
        self._clock = BtClock()
        self._io: Optional[IoHandler] = None
        self._interrupts: Optional[InterruptSource] = None
        self._irq_lines: Optional[Callable[[int], IrqLine]] = None
        self._msi: Optional[MsiSink] = None
        self._timers: Optional[Timers] = None
        self._trace: Optional[Callable[[str], None]] = None
        self.vcpus: list = []
        #: With several vCPUs, whose turn it is to run guest code (turns.py).
        self.turns: Optional[Turns] = Turns() if cpus > 1 else None

    def connect(self, io: IoHandler, interrupts: InterruptSource, irq_lines: Callable[[int], IrqLine],
                msi: MsiSink, timers: Timers, clock_mode: str = "virtual",
                trace: Optional[Callable[[str], None]] = None) -> None:
        """Wire the machine in: the exit dispatcher, the interrupt controllers and timed devices.

        `trace`, when given, receives one line per guest instruction (and turns
        translation off: every instruction goes through the interpreter).
        """
        if clock_mode not in CLOCK_MODES:
            raise ConfigError(f"--clock {clock_mode!r} is unknown: use one of {', '.join(CLOCK_MODES)}")
        self._io = io
        self._interrupts = interrupts
        self._irq_lines = irq_lines
        self._msi = msi
        self._timers = timers
        self._trace = trace
        self._clock.use_host_time(clock_mode == "host")

    def linux_cmdline_hints(self) -> str:
        """`lpj=` for a Linux guest with several vCPUs, so no CPU calibrates its delay loop against jiffies.

        Linux skips that calibration on application processors only when the
        TSC is constant and a core sibling has calibrated already (this CPU
        reports no multi-core topology: each vCPU is its own package) or lpj=
        gives the value. In virtual time jiffies move at one vCPU's
        instruction rate, so each calibration would take minutes. The TSC runs
        at TSC_HZ; lpj is that over the kernel's HZ, taken as 100, the lowest
        common one (a kernel with a larger HZ gets longer delays, never shorter).
        """
        return f"lpj={TSC_HZ // 100}" if self.cpus > 1 else ""

    def clock(self) -> BtClock:
        """The clock devices must use: virtual (instruction count) or host time, as connect() chose."""
        return self._clock

    def irq_line(self, irq: int) -> IrqLine:
        if self._irq_lines is None:
            raise XvmError("bt engine: connect() the interrupt controllers before asking for IRQ lines")
        return self._irq_lines(irq)

    def msi_sink(self) -> MsiSink:
        if self._msi is None:
            raise XvmError("bt engine: connect() the interrupt controllers before asking for the MSI sink")
        return self._msi

    def wake(self, index: int) -> None:
        """An interrupt or IPI arrived for vCPU `index` (the InterruptRouter's on_wake): stop idling now."""
        for vcpu in self.vcpus:
            if vcpu.index == index:
                vcpu._poll_at = 0
                vcpu._wake.set()

    def memory_written(self, paddr: int, length: int) -> None:
        """Guest RAM changed behind the vCPUs' backs (device DMA, a loader): keep them coherent.

        Any thread may call this. Each vCPU applies it at its next instruction
        boundary (its soft MMU resyncs shadow page tables and drops stale
        translations), so the vCPU thread alone touches its caches.
        """
        for vcpu in self.vcpus:
            vcpu._dma_writes.append((paddr, length))
            vcpu._poll_at = 0

    def create_vcpu(self, index: int) -> BtVcpu:
        if self._io is None or self._interrupts is None or self._timers is None:
            raise XvmError("bt engine: connect() the machine before creating vCPUs")
        if not 0 <= index < self.cpus or any(v.index == index for v in self.vcpus):
            raise ConfigError(f"vCPU index {index} is invalid or already created (the VM has {self.cpus})")
        vcpu = BtVcpu(self, index)
        if index == 0:
            self._clock.attach(vcpu.cpu)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()


class BtVcpu:
    """One virtual CPU run by the bt engine (xvm.engines.base.Vcpu)."""

    def __init__(self, vm: BtVm, index: int) -> None:
        assert vm._io is not None and vm._interrupts is not None and vm._timers is not None
        self.index = index
        self.vm = vm
        self.cpu = CpuState()
        self.cpu.apic_id = index
        if hasattr(vm._interrupts, "write_apic_base"):  # the InterruptRouter: LAPICs to tell
            self.cpu.apic_base_msr = _ApicBaseMsr(vm._interrupts, index)
        self.mmu = Mmu(vm.memory, self.cpu, _mmio(vm._io, self))
        self.io = _port_io(vm._io, self)
        self.counters = BtStats()
        self._interrupts = vm._interrupts
        self._timers = vm._timers
        self._clock = vm._clock
        self._trace = vm._trace
        #: Application processors start in wait-for-SIPI (SDM Vol. 3 9.4.4).
        self._waiting_for_sipi = index != 0
        self.cache = BlockCache(self.cpu, self.mmu, self.io, self.counters)
        self._kicked = False
        self._wake = threading.Event()
        #: Instruction count when this vCPU's current turn began (VMs with several vCPUs: turns.py).
        self._turn_began = 0
        #: (paddr, length) of RAM written by others, applied at the next poll (deque: thread-safe).
        self._dma_writes: deque = deque()
        #: Instruction count at which the next boundary check (timers, interrupts, kick) is due.
        self._poll_at = 0
        #: The timers' next deadline, re-read after device accesses and every POLL_INTERVAL
        #: instructions (polls for interrupts after STI/POPF need not ask again).
        self._deadline: Optional[int] = None
        self._deadline_stale = True
        self._deadline_read_at = 0

    # --- register state -------------------------------------------------------
    def get_regs(self) -> Regs:
        return self.cpu.get_regs()

    def set_regs(self, regs: Regs) -> None:
        self.cpu.set_regs(regs)
        self._state_changed()

    def get_sregs(self) -> SpecialRegs:
        return self.cpu.get_sregs()

    def set_sregs(self, sregs: SpecialRegs) -> None:
        self.cpu.set_sregs(sregs)
        self.mmu.mode_changed()
        self._state_changed()

    def _state_changed(self) -> None:
        self.cpu.halted = False
        self._poll_at = 0

    @property
    def stats(self) -> dict:
        return self.counters.snapshot(self.cpu.icount, self.mmu.stats)

    # --- control ---------------------------------------------------------------
    def kick(self) -> None:
        """Make the current or next run() return Interrupted (any thread)."""
        self._kicked = True
        self._poll_at = 0
        self._wake.set()

    def close(self) -> None:
        self.kick()
        self.cache.clear()

    def spin_wait(self) -> None:
        """The guest executed PAUSE: let virtual time (and the TSC) move on by PAUSE_NS."""
        if self.index == 0:
            self._skip_time(self._clock.now_ns() + PAUSE_NS)
            deadline = self._deadline
            if deadline is not None and self._clock.now_ns() >= deadline:
                self._poll_at = 0

    def _skip_time(self, when_ns: int) -> None:
        """Jump virtual time to `when_ns`; the TSC, which counts instructions, jumps with it."""
        skipped = self._clock.skip_to(when_ns)
        if skipped:
            advance_tsc(self.cpu, skipped // NS_PER_INSTRUCTION)

    def _device_exit(self) -> None:
        """A device was accessed: it may have raised an interrupt or moved a timer deadline."""
        self.counters.device_exits += 1
        self._poll_at = 0
        self._deadline_stale = True

    # --- the run loop --------------------------------------------------------
    def run(self) -> VcpuExit:
        """Execute the guest until the machine must see something (module docstring)."""
        counters = self.counters
        cpu = self.cpu
        bind_cpu = getattr(self._interrupts, "bind_cpu", None)
        if bind_cpu is not None:
            bind_cpu(self.index)  # LAPIC MMIO from this thread reaches this vCPU's LAPIC
        turns = self.vm.turns
        if turns is not None:
            turns.take(self.index)
            self._turn_began = cpu.icount
        start_ns = time.perf_counter_ns()
        start_icount = cpu.icount
        try:
            return self._run()
        finally:
            counters.run_ns += time.perf_counter_ns() - start_ns
            counters.run_instructions += cpu.icount - start_icount
            if turns is not None:
                turns.give(self.index)

    def _run(self) -> VcpuExit:
        if self._waiting_for_sipi:
            stop = self._wait_for_sipi()
            if stop is not None:
                return stop
        cpu = self.cpu
        run_blocks = self.cache.run
        step = self._step
        tracing = self._trace is not None
        while True:
            if cpu.icount >= self._poll_at:
                stop = self._poll()
                if stop is not None:
                    return stop
            if cpu.halted:
                stop = self._idle()
                if stop is not None:
                    return stop
                continue
            try:
                if tracing or cpu.interrupt_shadow or cpu.rflags & RFLAGS_TF or not run_blocks(self):
                    step()
            except GuestFault as fault:
                stop = self._fault(fault)
                if stop is not None:
                    return stop
            except TripleFault:
                return Shutdown("triple fault")

    def _step(self) -> None:
        """One instruction through the interpreter: the reference path, and every sensitive instruction."""
        cpu = self.cpu
        if self._trace is not None:
            self._trace(trace_line(cpu, self.mmu))
        interrupts_were_off = not cpu.rflags & RFLAGS_IF
        before = cpu.icount
        execute_one(cpu, self.mmu, self.io)
        self.counters.interpreted_instructions += cpu.icount - before
        if (interrupts_were_off and cpu.rflags & RFLAGS_IF) or cpu.interrupt_shadow or cpu.halted:
            # STI, POPF, IRET... may let a pending interrupt in after the next instruction.
            self._poll_at = 0

    def _fault(self, fault: GuestFault) -> Optional[VcpuExit]:
        """Deliver a guest fault raised at cpu.rip (the faulting instruction)."""
        cpu = self.cpu
        self.counters.faults += 1
        try:
            interrupts.deliver_fault(cpu, self.mmu, fault, cpu.rip)
        except TripleFault:
            return Shutdown("triple fault")
        cpu.halted = False
        self._poll_at = 0
        return None

    def _poll(self) -> Optional[VcpuExit]:
        """Boundary work: kick, due timers, interrupt acceptance; schedules the next poll."""
        cpu = self.cpu
        if self._kicked:
            self._kicked = False
            self._wake.clear()
            return Interrupted()
        turns = self.vm.turns
        if turns is not None and cpu.icount - self._turn_began >= SLICE_INSTRUCTIONS and turns.others_waiting():
            turns.hand_over(self.index)
            self._turn_began = cpu.icount
        dma_writes = self._dma_writes
        while dma_writes:
            self.mmu.physical_written(*dma_writes.popleft())
        stop = self._processor_signals()
        if stop is not None:
            return stop
        clock = self._clock
        if not clock.virtual:
            # Host time: keep the TSC (which counts instructions) up with the clock, so
            # that the guest's TSC calibration against the PIT and its clocksource agree.
            lag = clock.now_ns() // NS_PER_INSTRUCTION - read_tsc(cpu)
            if lag > 0:
                advance_tsc(cpu, lag)
        if self.index == 0:
            deadline = self._deadline
            if self._deadline_stale or cpu.icount - self._deadline_read_at >= POLL_INTERVAL:
                deadline = self._read_deadline()
            if deadline is not None and clock.now_ns() >= deadline:
                self._timers.tick(clock.now_ns())
                deadline = self._read_deadline()
        else:
            deadline = None
        if cpu.rflags & RFLAGS_IF and not cpu.interrupt_shadow and self._interrupts.pending(self.index):
            vector = self._interrupts.acknowledge(self.index)
            stop = self._deliver_external(vector)
            if stop is not None:
                return stop
        if cpu.interrupt_shadow:
            next_poll = cpu.icount + 1
        else:
            next_poll = cpu.icount + POLL_INTERVAL
            if deadline is not None and clock.virtual:
                next_poll = min(next_poll, cpu.icount + max(1, clock.instructions_until(deadline)))
        self._poll_at = next_poll
        return None

    def _wait_for_sipi(self) -> Optional[VcpuExit]:
        """Wait-for-SIPI (SDM Vol. 3 9.4.4): an AP sleeps until a STARTUP IPI gives it CS:IP = VV00:0000."""
        take_init = getattr(self._interrupts, "take_init", None)
        take_sipi = getattr(self._interrupts, "take_sipi", None)
        while True:
            if self._kicked:
                self._kicked = False
                self._wake.clear()
                return Interrupted()
            if take_init is not None:
                take_init(self.index)  # INIT while waiting: still waiting (it is what put us here)
            vector = take_sipi(self.index) if take_sipi is not None else None
            if vector is not None:
                self._reset(sipi_vector=vector)
                return None
            self._sleep(IDLE_WAIT_S)

    def _sleep(self, seconds: float) -> None:
        """Wait up to `seconds` for a wake-up (a kick stays visible through _kicked), other vCPUs running."""
        turns = self.vm.turns
        if turns is not None:
            turns.give(self.index)
        self._wake.wait(seconds)
        self._wake.clear()
        if turns is not None:
            turns.take(self.index)
            self._turn_began = self.cpu.icount

    def _reset(self, sipi_vector: Optional[int] = None) -> None:
        """INIT: the power-on register state (SDM Vol. 3 Table 10-1), keeping the instruction count and APIC.

        With a SIPI vector the CPU then starts in real mode at VV00:0000.
        """
        cpu = self.cpu
        kept = cpu.icount, cpu.apic_id, cpu.apic_base_msr
        for name, value in vars(CpuState()).items():
            setattr(cpu, name, value)
        cpu.icount, cpu.apic_id, cpu.apic_base_msr = kept
        if sipi_vector is not None:
            cs = cpu.segs[CS]
            cs.selector, cs.base, cpu.rip = sipi_vector << 8, sipi_vector << 12, 0
        cpu.refresh_mode()
        self.mmu.mode_changed()
        self._waiting_for_sipi = sipi_vector is None and self.index != 0
        self._poll_at = 0

    def _processor_signals(self) -> Optional[VcpuExit]:
        """NMI, and with several vCPUs INIT and SIPI, latched by this vCPU's LAPIC (SDM Vol. 3 10.6.1)."""
        source = self._interrupts
        take_nmi = getattr(source, "take_nmi", None)
        if take_nmi is not None and not self.cpu.nmi_blocked and take_nmi(self.index):
            self.cpu.halted = False
            self.counters.interrupts += 1
            try:
                interrupts.deliver(self.cpu, self.mmu, NMI, None, interrupts.KIND_NMI, self.cpu.rip)
                self.cpu.nmi_blocked = True
            except GuestFault as fault:
                return self._fault(fault)
            except TripleFault:
                return Shutdown("triple fault")
        if self.vm.cpus > 1:
            take_init = getattr(source, "take_init", None)
            take_sipi = getattr(source, "take_sipi", None)
            if take_init is not None and take_init(self.index):
                self._reset()
                if self._waiting_for_sipi:
                    return Interrupted()
            elif take_sipi is not None:
                take_sipi(self.index)  # a SIPI to a running CPU is ignored (SDM Vol. 3 9.4.4)
        return None

    def _read_deadline(self) -> Optional[int]:
        """Ask the timers for their next deadline (after device accesses, ticks, or now and then)."""
        self._deadline = self._timers.next_deadline()
        self._deadline_stale = False
        self._deadline_read_at = self.cpu.icount
        return self._deadline

    def _deliver_external(self, vector: int) -> Optional[VcpuExit]:
        """Take an external interrupt at this instruction boundary (SDM Vol. 3 6.8.1)."""
        cpu = self.cpu
        self.counters.interrupts += 1
        cpu.halted = False
        try:
            interrupts.deliver(cpu, self.mmu, vector, None, interrupts.KIND_EXTERNAL, cpu.rip)
        except GuestFault as fault:
            return self._fault(fault)
        except TripleFault:
            return Shutdown("triple fault")
        return None

    def _idle(self) -> Optional[VcpuExit]:
        """HLT: wait for the next interrupt, skipping virtual time to the next timer deadline.

        With IF=0 only NMI, INIT or SIPI can end the halt, and those come from
        other processors: on a one-vCPU VM that is a dead stop (Hlt), on a
        larger one the vCPU waits for them (an AP parked with CLI; HLT).
        """
        cpu = self.cpu
        if not cpu.rflags & RFLAGS_IF:
            if self.vm.cpus == 1:
                return Hlt()
            self._sleep(IDLE_WAIT_S)
            self._poll_at = 0
            return None
        if self._interrupts.pending(self.index):
            self._poll_at = 0
            return None
        clock = self._clock
        deadline = self._read_deadline() if self.index == 0 else None
        if deadline is not None and clock.virtual:
            # Nothing runs until the next timer fires: let virtual time skip there.
            self.counters.idle_skips += 1
            self._skip_time(deadline)
        else:
            wait = IDLE_WAIT_S
            if deadline is not None:
                wait = min(wait, max(0, deadline - clock.now_ns()) / 1e9)
            self._sleep(wait)
        self._poll_at = 0
        return None
