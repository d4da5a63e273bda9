"""The contract between the machine and an engine.

An engine turns guest RAM plus register state into running vCPUs. Whenever the
guest needs the VMM, `Vcpu.run()` returns a VcpuExit; the machine's single
exit dispatcher (xvm/machine/exits.py) serves it from the PIO/MMIO buses and
calls run() again. Both engines produce the same exit types, so a device
never knows which engine runs the guest.

Run-loop contract:
- run() executes the guest until an exit; it is called from the vCPU's own thread.
- For IoIn/MmioRead the dispatcher fills `exit.data` before the next run().
- kick() may be called from any thread; the current or next run() then returns
  Interrupted promptly, so the machine can pause or stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

from xvm.arch.x86.regs import Regs, SpecialRegs
from xvm.bus.irq import IrqLine, MsiSink
from xvm.memory import GuestMemory


class VcpuExit:
    """Why run() returned."""


@dataclass
class IoIn(VcpuExit):
    """IN/INS: the dispatcher writes `count` items of `size` bytes into `data`."""

    port: int
    size: int
    count: int
    data: memoryview


@dataclass
class IoOut(VcpuExit):
    """OUT/OUTS: `count` items of `size` bytes from `data`."""

    port: int
    size: int
    count: int
    data: bytes


@dataclass
class MmioRead(VcpuExit):
    """A load from an address that is not RAM; the dispatcher fills `data`."""

    address: int
    data: memoryview


@dataclass
class MmioWrite(VcpuExit):
    """A store to an address that is not RAM."""

    address: int
    data: bytes


@dataclass
class Hlt(VcpuExit):
    """HLT with interrupts that only the VMM can deliver (no in-kernel irqchip)."""


@dataclass
class Shutdown(VcpuExit):
    """Triple fault or a reset the CPU cannot handle: the VM stops with a register dump."""

    reason: str = "triple fault"


@dataclass
class FailEntry(VcpuExit):
    """VM entry failed (KVM_EXIT_FAIL_ENTRY): invalid guest state."""

    hardware_reason: int
    cpu: int = 0


@dataclass
class InternalError(VcpuExit):
    """The engine could not run the guest (KVM_EXIT_INTERNAL_ERROR, an emulation failure)."""

    suberror: int
    detail: str = ""


@dataclass
class SystemEvent(VcpuExit):
    """The guest asked for shutdown, reset or reported a crash (KVM_EXIT_SYSTEM_EVENT)."""

    kind: str


@dataclass
class Interrupted(VcpuExit):
    """run() returned because of kick() (pause, stop, or a timeout)."""


@dataclass
class Unhandled(VcpuExit):
    """An exit reason xvm does not handle; stops the VM with a register dump."""

    reason: int
    name: str = ""


class IoHandler(Protocol):
    """Serves IoIn/IoOut/MmioRead/MmioWrite synchronously (the machine's exit dispatcher).

    The kvm engine returns these exits from run() and the machine serves them;
    the bt engine, which executes IN/OUT and MMIO loads itself, calls the same
    handler in the middle of the instruction.
    """

    def __call__(self, exit_: VcpuExit) -> None: ...


class InterruptSource(Protocol):
    """xvm's own interrupt controllers (PIC/IOAPIC/LAPIC) as one vCPU sees them.

    Used by engines without an in-kernel irqchip (bt): at each instruction
    boundary with IF=1 the engine asks `pending(cpu)` and, if true, takes the
    vector from `acknowledge(cpu)` (the INTA cycle).
    """

    def pending(self, cpu: int) -> bool: ...

    def acknowledge(self, cpu: int) -> int: ...


class Vcpu(Protocol):
    """One virtual CPU of a VM."""

    index: int

    def get_regs(self) -> Regs: ...

    def set_regs(self, regs: Regs) -> None: ...

    def get_sregs(self) -> SpecialRegs: ...

    def set_sregs(self, sregs: SpecialRegs) -> None: ...

    def run(self) -> VcpuExit: ...

    def kick(self) -> None: ...

    def close(self) -> None: ...


class VmBackend(Protocol):
    """The engine's side of one VM: vCPUs and interrupt delivery."""

    #: True when the engine models the PIC/IOAPIC/LAPIC/PIT itself (KVM's in-kernel
    #: irqchip); False when the machine must add xvm's own device models.
    has_irqchip: bool

    def create_vcpu(self, index: int) -> Vcpu: ...

    def irq_line(self, irq: int) -> IrqLine: ...

    def msi_sink(self) -> MsiSink: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """A way to run x86 guests; `create_vm` binds it to guest memory."""

    name: str

    def create_vm(self, memory: GuestMemory, cpus: int) -> VmBackend: ...


def engine_names() -> tuple:
    """Engines xvm knows, in the order `--engine auto` considers them."""
    return ("kvm", "bt")


def exit_name(exit_: Optional[VcpuExit]) -> str:
    """Short name of an exit for stats ("IoOut", "MmioRead", ...)."""
    return type(exit_).__name__ if exit_ is not None else "None"
