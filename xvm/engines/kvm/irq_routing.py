"""KVM's GSI routing table: the in-kernel irqchip's default routes plus MSI routes.

KVM_SET_GSI_ROUTING replaces the whole table, so a table that adds MSI
routes must restate what KVM_CREATE_IRQCHIP installed
(kvm_setup_default_irq_routing, arch/x86/kvm/irq_comm.c): GSI 0-15 to the
PIC (master pins 0-7, slave pins 0-7) and to the IOAPIC pin of the same
number, GSI 16-23 to the IOAPIC only. MSI routes take the GSIs above the
IOAPIC's; an irqfd bound to one of them makes an eventfd write inject that
MSI inside KVM (virtio-pci's MSI-X vectors, machine/pci_devices.py).

    table = routing_table({24: MsiMessage(0xFEE00000, 0x41)})
    vm_fd.set_gsi_routing(table)
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

from xvm.arch.x86 import layout
from xvm.bus.irq import MsiMessage
from xvm.engines.kvm import abi

# kvm_irq_routing_irqchip.irqchip (linux/kvm.h)
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2

#: GSIs the PICs serve (ISA IRQs).
PIC_GSIS = 16
#: The first GSI free for MSI routes.
FIRST_MSI_GSI = layout.IOAPIC_PINS
#: KVM_MAX_IRQ_ROUTES (include/linux/kvm_host.h on x86): the most entries a table may have.
KVM_MAX_IRQ_ROUTES = 4096


def default_routes() -> list:
    """(gsi, irqchip, pin) of the routes KVM_CREATE_IRQCHIP sets up, in KVM's order."""
    routes = []
    for gsi in range(layout.IOAPIC_PINS):
        routes.append((gsi, KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < PIC_GSIS:
            routes.append((gsi, KVM_IRQCHIP_PIC_MASTER if gsi < 8 else KVM_IRQCHIP_PIC_SLAVE, gsi % 8))
    return routes


def routing_table(msi_routes: Mapping[int, MsiMessage]) -> ctypes.Structure:
    """A kvm_irq_routing buffer: the default irqchip routes, then one MSI route per GSI of `msi_routes`."""
    for gsi in msi_routes:
        if gsi < FIRST_MSI_GSI:
            raise ValueError(f"GSI {gsi} belongs to the PIC/IOAPIC; MSI routes start at {FIRST_MSI_GSI}")
    irqchip = default_routes()
    count = len(irqchip) + len(msi_routes)
    if count > KVM_MAX_IRQ_ROUTES:
        raise ValueError(f"{count} GSI routes: KVM takes at most {KVM_MAX_IRQ_ROUTES}")
    table = abi.irq_routing_buffer(count)
    for entry, (gsi, chip, pin) in zip(table.entries, irqchip):
        entry.gsi, entry.type = gsi, abi.KVM_IRQ_ROUTING_IRQCHIP
        entry.u.irqchip.irqchip, entry.u.irqchip.pin = chip, pin
    for entry, gsi in zip(table.entries[len(irqchip) :], sorted(msi_routes)):
        message = msi_routes[gsi]
        entry.gsi, entry.type = gsi, abi.KVM_IRQ_ROUTING_MSI
        entry.u.msi.address_lo = message.address & 0xFFFFFFFF
        entry.u.msi.address_hi = message.address >> 32
        entry.u.msi.data = message.data
    return table
