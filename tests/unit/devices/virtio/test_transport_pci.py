"""virtio-pci (modern) as Linux's virtio_pci_modern drives it, with virtio-rng behind it."""

from __future__ import annotations

import struct

import pytest

from xvm.bus.irq import MsiMessage
from xvm.devices.pci.config_space import PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_COMMAND, PCI_COMMAND_MEMORY
from xvm.devices.pci.host_bridge import PciBus
from xvm.devices.pci.msix import PCI_MSIX_FLAGS_ENABLE
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
)
from xvm.devices.virtio.rng import VirtioRng
from xvm.devices.virtio.transport_pci import (
    COMMON_OFFSET,
    ISR_OFFSET,
    NOTIFY_OFFSET,
    VIRTIO_MSI_NO_VECTOR,
    VirtioPciTransport,
)

C = {  # struct virtio_pci_common_cfg
    "dfselect": 0x00, "df": 0x04, "gfselect": 0x08, "gf": 0x0C, "msix": 0x10, "numq": 0x12, "status": 0x14,
    "gen": 0x15, "qsel": 0x16, "qsize": 0x18, "qmsix": 0x1A, "qenable": 0x1C, "qnoff": 0x1E,
    "qdesc": 0x20, "qavail": 0x28, "qused": 0x30,
}
SIZES = {"status": 1, "gen": 1, "msix": 2, "numq": 2, "qsel": 2, "qsize": 2, "qmsix": 2, "qenable": 2, "qnoff": 2}


class Sink:
    def __init__(self):
        self.messages = []

    def signal_msi(self, message):
        self.messages.append(message)


class Mapper:
    def __init__(self):
        self.maps = {}

    def map(self, base, length, device):
        self.maps[base] = (length, device)
        return True

    def unmap(self, base):
        del self.maps[base]


@pytest.fixture
def setup(memory, irq):
    rng = VirtioRng(memory, entropy=lambda n: bytes(range(n % 256)) if n <= 256 else b"\x5a" * n)
    sink = Sink()
    transport = VirtioPciTransport(rng, sink, irq, irq=10)
    bus = PciBus()
    bus.add(transport)
    return rng, transport, sink, irq


def common_read(t, name):
    return t.read(COMMON_OFFSET + C[name], SIZES.get(name, 4))


def common_write(t, name, value):
    t.write(COMMON_OFFSET + C[name], SIZES.get(name, 4), value)


def find_virtio_caps(t):
    caps = {}
    pointer = t.config_read(PCI_CAPABILITY_LIST, 1)
    while pointer:
        if t.config_read(pointer, 1) == 0x09:
            cfg_type = t.config_read(pointer + 3, 1)
            bar = t.config_read(pointer + 4, 1)
            offset, length = t.config_read(pointer + 8, 4), t.config_read(pointer + 12, 4)
            caps[cfg_type] = (bar, offset, length, pointer)
        pointer = t.config_read(pointer + 1, 1)
    return caps


def linux_probe(t, driver, features_word1=1, use_msix=False, msix_cap=None):
    """vp_modern_probe + virtio_dev_probe + vp_find_vqs, one queue."""
    common_write(t, "status", 0)
    common_write(t, "status", VIRTIO_CONFIG_S_ACKNOWLEDGE)
    common_write(t, "status", VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    common_write(t, "dfselect", 0)
    low = common_read(t, "df")
    common_write(t, "dfselect", 1)
    high = common_read(t, "df")
    assert high & 1  # VIRTIO_F_VERSION_1
    common_write(t, "gfselect", 0)
    common_write(t, "gf", low)
    common_write(t, "gfselect", 1)
    common_write(t, "gf", features_word1)
    status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
    common_write(t, "status", status)
    if not common_read(t, "status") & VIRTIO_CONFIG_S_FEATURES_OK:
        return False
    if use_msix:
        t.config_write(msix_cap + 2, 2, PCI_MSIX_FLAGS_ENABLE)
        common_write(t, "msix", 0)
        assert common_read(t, "msix") == 0
    assert common_read(t, "numq") == 1
    common_write(t, "qsel", 0)
    assert common_read(t, "qsize") == 256
    assert not common_read(t, "qenable")
    common_write(t, "qsize", driver.size)
    for name, address in (("qdesc", driver.desc), ("qavail", driver.avail), ("qused", driver.used_ring)):
        t.write(COMMON_OFFSET + C[name], 4, address & 0xFFFF_FFFF)  # vp_iowrite64_twopart
        t.write(COMMON_OFFSET + C[name] + 4, 4, address >> 32)
    if use_msix:
        common_write(t, "qmsix", 1)
        assert common_read(t, "qmsix") == 1
    common_write(t, "qenable", 1)
    common_write(t, "status", status | VIRTIO_CONFIG_S_DRIVER_OK)
    return True


def test_identity_and_capabilities(setup):
    _, t, _, _ = setup
    assert t.config_read(0, 4) == 0x1044_1AF4
    assert t.config_read(8, 1) == 1  # revision 1: modern only
    caps = find_virtio_caps(t)
    assert {1, 2, 3, 4, 5} <= set(caps)
    assert caps[1][:3] == (2, COMMON_OFFSET, 0x38)
    assert caps[3][:2] == (2, ISR_OFFSET)
    bar, offset, _, pointer = caps[2]
    assert (bar, offset) == (2, NOTIFY_OFFSET)
    assert t.config_read(pointer + 16, 4) == 4  # notify_off_multiplier


def test_bars_and_mapping(setup):
    _, t, _, _ = setup
    t.config.mapper = mapper = Mapper()
    t.config_write(PCI_BASE_ADDRESS_0, 4, 0xFFFF_FFFF)
    assert t.config_read(PCI_BASE_ADDRESS_0, 4) == 0xFFFF_F000
    t.config_write(PCI_BASE_ADDRESS_0 + 8, 4, 0xFFFF_FFFF)
    assert t.config_read(PCI_BASE_ADDRESS_0 + 8, 4) == 0xFFFF_C004
    t.config_write(PCI_BASE_ADDRESS_0, 4, 0xE000_4000)
    t.config_write(PCI_BASE_ADDRESS_0 + 8, 4, 0xE000_0000)
    t.config_write(PCI_BASE_ADDRESS_0 + 12, 4, 0)
    t.config_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
    assert mapper.maps[0xE000_0000] == (0x4000, t)
    assert mapper.maps[0xE000_4000][0] == 0x1000


def test_negotiation_and_intx_request(setup, memory, make_driver):
    rng, t, _, irq = setup
    driver = make_driver(memory, rng.queues[0], size=8)
    assert linux_probe(t, driver)
    assert rng.activated and rng.queues[0].size == 8
    head = driver.post([], [16])
    t.write(NOTIFY_OFFSET, 2, 0)  # kick queue 0 (queue_notify_off 0 * multiplier)
    assert driver.used() == [(head, 16)]
    assert driver.written(head) == bytes(range(16))
    assert irq.level and t.config.status & 0x08  # INTx asserted, STATUS.INTERRUPT set
    assert t.read(ISR_OFFSET, 1) == 1
    assert not irq.level and t.read(ISR_OFFSET, 1) == 0


def test_msix_request(setup, memory, make_driver):
    rng, t, sink, irq = setup
    driver = make_driver(memory, rng.queues[0], size=8)
    msix_cap = t.msix_cap
    assert linux_probe(t, driver, use_msix=True, msix_cap=msix_cap)
    # Linux programs the table entry for vector 1 and unmasks it.
    t.msix.table_write(16, 4, 0xFEE0_0000)
    t.msix.table_write(24, 4, 0x31)
    t.msix.table_write(28, 4, 0)
    driver.post([], [4])
    t.write(NOTIFY_OFFSET, 2, 0)
    assert sink.messages == [MsiMessage(0xFEE0_0000, 0x31)]
    assert not irq.level


def test_vector_out_of_range_reads_no_vector(setup):
    _, t, _, _ = setup
    common_write(t, "msix", 7)
    assert common_read(t, "msix") == VIRTIO_MSI_NO_VECTOR


def test_features_not_offered_are_refused(setup, memory, make_driver):
    rng, t, _, _ = setup
    driver = make_driver(memory, rng.queues[0], size=8)
    assert not linux_probe(t, driver, features_word1=1 | 1 << 8)  # bit 40 was not offered
    assert not rng.activated


def test_legacy_driver_without_version_1_is_refused(setup, memory, make_driver):
    rng, t, _, _ = setup
    assert not linux_probe(t, make_driver(memory, rng.queues[0], size=8), features_word1=0)


def test_bad_ring_address_sets_needs_reset(setup, memory, make_driver, irq):
    rng, t, _, _ = setup
    driver = make_driver(memory, rng.queues[0], size=8)
    driver.used_ring = 0xFFFF_0000  # outside the 4 MiB of RAM
    linux_probe(t, driver)
    assert common_read(t, "status") & VIRTIO_CONFIG_S_NEEDS_RESET
    assert t.read(ISR_OFFSET, 1) == 2  # configuration change interrupt
    t.write(NOTIFY_OFFSET, 2, 0)  # kicks are ignored until reset
    common_write(t, "status", 0)
    assert common_read(t, "status") == 0 and rng.queues[0].size == 256


def test_malformed_chain_sets_needs_reset(setup, memory, make_driver):
    rng, t, _, _ = setup
    driver = make_driver(memory, rng.queues[0], size=8)
    linux_probe(t, driver)
    driver.publish(200)  # head outside the table
    t.write(NOTIFY_OFFSET, 2, 0)
    assert rng.needs_reset and common_read(t, "status") & VIRTIO_CONFIG_S_NEEDS_RESET


def test_queue_setup_frozen_after_enable(setup, memory, make_driver):
    rng, t, _, _ = setup
    driver = make_driver(memory, rng.queues[0], size=8)
    linux_probe(t, driver)
    common_write(t, "qsize", 4)
    t.write(COMMON_OFFSET + C["qdesc"], 8, 0x1234000)
    assert common_read(t, "qsize") == 8 and rng.queues[0].desc_addr == driver.desc


def test_out_of_range_queue_select(setup):
    _, t, _, _ = setup
    common_write(t, "qsel", 5)
    assert common_read(t, "qsize") == 0
    common_write(t, "qenable", 1)  # ignored


def test_pci_cfg_access_window(setup):
    _, t, _, _ = setup
    _, _, _, pointer = find_virtio_caps(t)[5]
    t.config_write(pointer + 4, 1, 2)  # bar 2
    t.config_write(pointer + 8, 4, COMMON_OFFSET + C["numq"])
    t.config_write(pointer + 12, 4, 2)
    assert t.config_read(pointer + 16, 2) == 1


def test_common_config_read_sizes(setup):
    _, t, _, _ = setup
    assert t.read(COMMON_OFFSET + C["qsize"], 2) == 256
    assert t.read(COMMON_OFFSET + 0x100, 4) == 0
    whole = t.read(COMMON_OFFSET + C["qdesc"], 8)
    assert whole == 0
    assert struct.pack("<H", t.read(COMMON_OFFSET + C["numq"], 2)) == b"\x01\x00"
