"""The PIO and MMIO buses and the interrupt-line protocols devices raise IRQs through."""

from xvm.bus.bus import Bus, BusDevice, BusError
from xvm.bus.irq import IrqLine, MsiMessage, MsiSink

__all__ = ["Bus", "BusDevice", "BusError", "IrqLine", "MsiMessage", "MsiSink"]
