"""A PC's interrupt wiring for engines without an in-kernel irqchip (bt).

One 8259 pair, one IOAPIC and one local APIC per vCPU, connected the way a
PC (and QEMU's `-M pc`) connects them:

- ISA IRQ n drives PIC input n *and* IOAPIC pin n, except ISA IRQ 0 (the
  PIT), which goes to IOAPIC pin `layout.PIT_IOAPIC_PIN`. The MP table and
  the MADT xvm writes describe the same routing, so the guest programs the
  pin the timer really arrives at: with the value 0 it is 1:1 (KVM's default
  GSI routing); QEMU uses 2 and an interrupt source override IRQ0 -> GSI2.
  GSIs 16-23 (PCI INTx) exist only on the IOAPIC.
- The PIC's INTR reaches CPU 0 through LINT0 when LINT0 is an unmasked
  ExtINT entry (virtual-wire mode, how firmware and KVM leave the BSP) or
  when the LAPIC is hardware-disabled, and any CPU through an IOAPIC entry
  with ExtINT delivery (Linux's check_timer() tries that route).
- IOAPIC entries, MSIs and IPIs become ApicMessages delivered to every LAPIC
  whose ID or logical destination matches (lowest-priority to the one with
  the lowest processor priority); EOI of a level-triggered vector goes back
  to the IOAPIC.

The router implements xvm.engines.base.InterruptSource (`pending(cpu)`,
`acknowledge(cpu)`: the LAPIC first, then the PIC) and MsiSink, and hands out
`irq_line(irq)` IrqLines. Timed devices (each LAPIC timer, plus whatever is
added with `add_timer`, e.g. the PIT and the RTC) are driven together by
`tick(now_ns)` and `next_deadline()`.

Locking: one re-entrant lock guards every controller. Devices reach it
through their IrqLines (lock order: device or bus lock, then router lock);
the guest reaches it through the bus wrappers from `pio_devices()`,
`mmio_devices()` and `guard()`. `on_wake(cpu)` is called with the lock held
whenever an interrupt may have become pending for a CPU: it must only kick
(set an event), never call back into the router.

The LAPIC page at 0xFEE00000 is per CPU while a bus has no notion of CPU:
each vCPU thread calls `bind_cpu(index)` once (a single-threaded engine
calls it before running each vCPU) and its MMIO accesses reach its own LAPIC.

    router = InterruptRouter(cpus=2, clock=clock, on_wake=engine.kick_cpu)
    for base, length, dev in router.pio_devices():
        pio.insert(dev, base, length)
    for base, length, dev in router.mmio_devices():
        mmio.insert(dev, base, length)
    pit = I8254Pit(router.irq_line(IRQ_PIT), clock)
    pio.insert(router.add_timer(pit), PORT_I8254_PIT, 4)
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

from xvm.arch.x86 import layout
from xvm.bus.irq import MsiMessage
from xvm.devices.clock import Clock
from xvm.devices.legacy.i8259_pic import I8259Pair
from xvm.devices.legacy.ioapic import IOAPIC_MMIO_SIZE, IOAPIC_NUM_PINS, IoApic
from xvm.devices.legacy.lapic import (
    APIC_DEST_ALLBUT,
    APIC_DEST_ALLINC,
    APIC_DEST_SELF,
    APIC_DM_LOWEST,
    LAPIC_MMIO_SIZE,
    ApicMessage,
    Lapic,
)

ISA_IRQS = 16
# MSI address/data layout (SDM 11.11.1, 11.11.2).
MSI_ADDR_BASE_MASK = 0xFFF00000
MSI_ADDR_BASE = 0xFEE00000
MSI_ADDR_DEST_SHIFT = 12
MSI_ADDR_DEST_LOGICAL = 0x4
MSI_DATA_DELIV_MODE_SHIFT = 8
MSI_DATA_TRIGGER_LEVEL = 0x8000


class TimedDevice(Protocol):
    """A device that catches up lazily (STYLE.md 12)."""

    def tick(self, now_ns: int) -> None: ...

    def next_deadline(self) -> Optional[int]: ...


class _Guarded:
    """A BusDevice whose accesses take the router lock."""

    def __init__(self, device, lock: threading.RLock) -> None:
        self._device = device
        self._lock = lock

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            return self._device.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._device.write(offset, size, value)


class _LapicWindow:
    """The 0xFEE00000 page: each vCPU thread sees its own LAPIC."""

    def __init__(self, router: InterruptRouter) -> None:
        self._router = router

    def read(self, offset: int, size: int) -> int:
        router = self._router
        with router.lock:
            return router.lapics[router.current_cpu()].read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        router = self._router
        with router.lock:
            router.lapics[router.current_cpu()].write(offset, size, value)


class _IrqPin:
    """IrqLine for one ISA IRQ or GSI."""

    def __init__(self, router: InterruptRouter, irq: int) -> None:
        self._router = router
        self.irq = irq

    def set_level(self, high: bool) -> None:
        self._router.set_irq(self.irq, high)


class _PicIntr:
    """The PIC's INTR output: wakes whichever CPU can take it."""

    def __init__(self, router: InterruptRouter) -> None:
        self._router = router

    def set_level(self, high: bool) -> None:
        if high:
            self._router.wake_for_pic()


class InterruptRouter:
    """PIC pair + IOAPIC + one LAPIC per vCPU, as one InterruptSource and MsiSink."""

    def __init__(self, cpus: int, clock: Clock, on_wake: Optional[Callable[[int], None]] = None) -> None:
        self.lock = threading.RLock()
        self._on_wake = on_wake
        self._thread = threading.local()
        self.pic = I8259Pair(intr=_PicIntr(self))
        self.ioapic = IoApic(self.route)
        self.lapics = [
            Lapic(
                index,
                clock,
                send_ipi=functools.partial(self._route_ipi, index),
                on_eoi=self.ioapic.eoi,
                bsp=index == 0,
                on_interrupt=functools.partial(self._wake, index),
            )
            for index in range(cpus)
        ]
        self._timers: list = list(self.lapics)
        self.dropped_msis = 0

    # --- wiring for the machine -----------------------------------------------------
    def irq_line(self, irq: int) -> _IrqPin:
        """IrqLine for ISA IRQ 0-15 (PIC and IOAPIC) or GSI 16-23 (IOAPIC only)."""
        return _IrqPin(self, irq)

    def guard(self, device) -> _Guarded:
        """Wrap a BusDevice so guest accesses are serialized with interrupt delivery."""
        return _Guarded(device, self.lock)

    def add_timer(self, device: TimedDevice) -> _Guarded:
        """Drive `device` from tick()/next_deadline(); returns it guarded for the bus."""
        with self.lock:
            self._timers.append(device)
        return self.guard(device)

    def pio_devices(self) -> list:
        """(port, length, device) for the PIC pair and the ELCR."""
        return [
            (layout.PORT_I8259_MASTER, 2, self.guard(self.pic.master)),
            (layout.PORT_I8259_SLAVE, 2, self.guard(self.pic.slave)),
            (layout.PORT_ELCR, 2, self.guard(self.pic.elcr)),
        ]

    def mmio_devices(self) -> list:
        """(address, length, device) for the IOAPIC and the per-CPU LAPIC page."""
        return [
            (layout.IOAPIC_START, IOAPIC_MMIO_SIZE, self.guard(self.ioapic)),
            (layout.LAPIC_START, LAPIC_MMIO_SIZE, _LapicWindow(self)),
        ]

    def bind_cpu(self, cpu: int) -> None:
        """Make LAPIC MMIO from the calling thread reach CPU `cpu`'s LAPIC."""
        if not 0 <= cpu < len(self.lapics):
            raise ValueError(f"no vCPU {cpu}: the router has {len(self.lapics)}")
        self._thread.cpu = cpu

    def current_cpu(self) -> int:
        return getattr(self._thread, "cpu", 0)

    def apic_base(self, cpu: int) -> int:
        """IA32_APIC_BASE of CPU `cpu`, for an engine without an in-kernel irqchip (bt's RDMSR)."""
        with self.lock:
            return self.lapics[cpu].apic_base

    def write_apic_base(self, cpu: int, value: int) -> None:
        """WRMSR IA32_APIC_BASE on CPU `cpu`: its LAPIC model sees the global enable bit."""
        with self.lock:
            self.lapics[cpu].write_apic_base(value)

    # --- interrupt inputs ----------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ / GSI `irq` (the IrqLine path)."""
        with self.lock:
            if 0 <= irq < ISA_IRQS:
                self.pic.set_irq(irq, level)
            pin = self.ioapic_pin(irq)
            if pin is not None:
                self.ioapic.set_irq(pin, level)

    @staticmethod
    def ioapic_pin(irq: int) -> Optional[int]:
        """IOAPIC pin ISA IRQ / GSI `irq` arrives at, or None (the MP table/MADT say the same)."""
        if irq == layout.IRQ_PIT:
            return layout.PIT_IOAPIC_PIN
        if irq == layout.PIT_IOAPIC_PIN or not 0 <= irq < IOAPIC_NUM_PINS:
            return None  # the pin the PIT took (ISA IRQ 2 is the cascade, never raised)
        return irq

    def signal_msi(self, message: MsiMessage) -> None:
        """MsiSink: an MSI write decoded into an APIC bus message (SDM 11.11)."""
        if message.address & MSI_ADDR_BASE_MASK != MSI_ADDR_BASE:
            self.dropped_msis += 1
            return
        data = message.data
        self.route(
            ApicMessage(
                vector=data & 0xFF,
                delivery_mode=(data >> MSI_DATA_DELIV_MODE_SHIFT) & 7,
                logical=bool(message.address & MSI_ADDR_DEST_LOGICAL),
                destination=(message.address >> MSI_ADDR_DEST_SHIFT) & 0xFF,
                level_triggered=bool(data & MSI_DATA_TRIGGER_LEVEL),
            )
        )

    def route(self, message: ApicMessage) -> None:
        """Deliver an APIC bus message to the LAPICs its destination selects."""
        with self.lock:
            targets = [apic for apic in self.lapics if apic.matches(message.destination, message.logical)]
            self._deliver(targets, message)

    def _route_ipi(self, source: int, _apic_id: int, message: ApicMessage) -> None:
        with self.lock:
            shorthand = message.shorthand
            if shorthand == APIC_DEST_SELF:
                targets = [self.lapics[source]]
            elif shorthand == APIC_DEST_ALLINC:
                targets = list(self.lapics)
            elif shorthand == APIC_DEST_ALLBUT:
                targets = [apic for index, apic in enumerate(self.lapics) if index != source]
            else:
                targets = [apic for apic in self.lapics if apic.matches(message.destination, message.logical)]
            self._deliver(targets, message)

    @staticmethod
    def _deliver(targets: list, message: ApicMessage) -> None:
        if message.delivery_mode == APIC_DM_LOWEST and targets:
            # Lowest priority: the APIC with the lowest processor priority takes it.
            targets = [min(targets, key=lambda apic: apic.ppr())]
        for apic in targets:
            apic.accept(message)

    # --- InterruptSource ------------------------------------------------------------------
    def _pic_reaches(self, cpu: int) -> bool:
        apic = self.lapics[cpu]
        if apic.extint_pending:
            return True
        return cpu == 0 and (not apic.hw_enabled or apic.accepts_pic_interrupt())

    def pending(self, cpu: int) -> bool:
        """An interrupt is waiting for CPU `cpu` (checked at instruction boundaries with IF=1)."""
        with self.lock:
            apic = self.lapics[cpu]
            if apic.hw_enabled and apic.has_interrupt():
                return True
            return self._pic_reaches(cpu) and self.pic.has_interrupt()

    def acknowledge(self, cpu: int) -> int:
        """INTA for CPU `cpu`: the vector to deliver (LAPIC first, then the PIC)."""
        with self.lock:
            apic = self.lapics[cpu]
            if apic.hw_enabled and apic.has_interrupt():
                return apic.acknowledge()
            if self._pic_reaches(cpu) and self.pic.has_interrupt():
                apic.extint_pending = False
                return self.pic.acknowledge()
            if not apic.hw_enabled:
                return self.pic.acknowledge()  # the PIC answers INTA with its spurious IRQ 7
            return apic.acknowledge()  # the LAPIC's spurious vector

    def take_nmi(self, cpu: int) -> bool:
        with self.lock:
            return self.lapics[cpu].take_nmi()

    def take_init(self, cpu: int) -> bool:
        with self.lock:
            return self.lapics[cpu].take_init()

    def take_sipi(self, cpu: int) -> Optional[int]:
        with self.lock:
            return self.lapics[cpu].take_sipi()

    # --- time -------------------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """Let every timed device catch up to `now_ns`."""
        with self.lock:
            for device in self._timers:
                device.tick(now_ns)

    def next_deadline(self) -> Optional[int]:
        """Earliest clock time at which any timed device will raise an interrupt, or None."""
        with self.lock:
            deadlines = [d for d in (device.next_deadline() for device in self._timers) if d is not None]
        return min(deadlines) if deadlines else None

    # --- wake-ups --------------------------------------------------------------------------
    def _wake(self, cpu: int) -> None:
        if self._on_wake is not None:
            self._on_wake(cpu)

    def wake_for_pic(self) -> None:
        """The PIC raised INTR: wake the CPUs it can reach."""
        for cpu in range(len(self.lapics)):
            if self._pic_reaches(cpu):
                self._wake(cpu)
