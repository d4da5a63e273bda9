"""How devices raise interrupts without knowing who delivers them.

A device is handed an IrqLine at build time. On the kvm engine the line is
KVM_IRQ_LINE (or an irqfd) into the in-kernel PIC/IOAPIC; on the bt engine it
is a pin of the emulated PIC/IOAPIC. PCI devices using MSI/MSI-X get an
MsiSink instead.
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]


class IrqLine(Protocol):
    """A level-sensitive interrupt line (edge devices pulse it: high then low)."""

    def set_level(self, high: bool) -> None: ...


@dataclass(frozen=True)
class MsiMessage:
    """An MSI as the device writes it: address and data (PCI 3.0 6.8)."""

    address: int
    data: int


class MsiSink(Protocol):
    """Delivers MSI messages to the interrupt controller."""

    def signal_msi(self, message: MsiMessage) -> None: ...


class NullIrqLine:
    """An IrqLine that goes nowhere (devices under test, unwired pins)."""

    def __init__(self) -> None:
        self.level = False
        self.raised = 0

    def set_level(self, high: bool) -> None:
        if high and not self.level:
            self.raised += 1
        self.level = high
