"""The GSI routing table xvm hands KVM_SET_GSI_ROUTING: KVM's default irqchip routes plus MSI routes."""

from __future__ import annotations

import pytest

from xvm.bus.irq import MsiMessage
from xvm.engines.kvm import abi
from xvm.engines.kvm.irq_routing import (
    FIRST_MSI_GSI,
    KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_IRQ_ROUTES,
    routing_table,
)


def entries(table):
    return [table.entries[i] for i in range(table.nr)]


def test_without_msi_routes_the_table_is_kvms_default():
    table = routing_table({})
    routes = [(e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) for e in entries(table)]
    assert all(e.type == abi.KVM_IRQ_ROUTING_IRQCHIP for e in entries(table))
    assert len(routes) == 16 * 2 + 8  # GSI 0-15 on PIC and IOAPIC, 16-23 on the IOAPIC
    assert {(gsi, pin) for gsi, chip, pin in routes if chip == KVM_IRQCHIP_IOAPIC} == {(g, g) for g in range(24)}
    assert {(gsi, pin) for gsi, chip, pin in routes if chip == KVM_IRQCHIP_PIC_MASTER} == {(g, g) for g in range(8)}
    assert {(gsi, pin) for gsi, chip, pin in routes if chip == KVM_IRQCHIP_PIC_SLAVE} == {
        (g, g - 8) for g in range(8, 16)
    }


def test_msi_routes_follow_with_their_address_and_data():
    table = routing_table({25: MsiMessage(0x1_FEE0_1000, 0x4042), 24: MsiMessage(0xFEE0_0000, 0x41)})
    msi = [e for e in entries(table) if e.type == abi.KVM_IRQ_ROUTING_MSI]
    assert [(e.gsi, e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) for e in msi] == [
        (24, 0xFEE0_0000, 0, 0x41),
        (25, 0xFEE0_1000, 1, 0x4042),
    ]
    assert table.nr == 42 and bytes(table)[:4] == (42).to_bytes(4, "little")


def test_msi_routes_may_not_take_irqchip_gsis():
    with pytest.raises(ValueError, match="MSI routes start at 24"):
        routing_table({FIRST_MSI_GSI - 1: MsiMessage(0xFEE0_0000, 0x41)})


def test_the_table_stays_within_kvms_limit():
    too_many = {FIRST_MSI_GSI + i: MsiMessage(0xFEE0_0000, i) for i in range(KVM_MAX_IRQ_ROUTES)}
    with pytest.raises(ValueError, match="at most 4096"):
        routing_table(too_many)
