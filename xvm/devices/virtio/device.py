"""What every virtio device shares, whatever the transport (virtio spec 1.2 sections 2, 3 and 6).

A VirtioDevice owns its feature bits, its virtqueues, its device-specific
configuration space and the device status state machine; it knows nothing of
PCI or MMIO (STYLE.md 4). A transport (transport_pci.py, transport_mmio.py)
maps the registers, forwards status writes to `write_status`, kicks to
`queue_notify`, and installs an `interrupt` object through which
`signal_used` / `signal_config_change` reach the guest (an MSI-X vector, or an
ISR bit and a level-triggered line).

Status (2.1, 3.1.1): the driver sets ACKNOWLEDGE, DRIVER, writes its features,
sets FEATURES_OK and reads it back (the device clears it when the features are
unacceptable: not a subset of what was offered, or VERSION_1 missing), sets up
the queues and finally DRIVER_OK, which activates the device. Writing 0 resets
it. When the driver breaks the queue rules the device sets DEVICE_NEEDS_RESET
and raises a configuration-change interrupt (2.1.2) and stops serving.

A device subclass looks like this (cf. rng.py; kvmtool virtio/rng.c):

    class Echo(VirtioDevice):
        device_id = 99
        def __init__(self, memory):
            super().__init__(memory, queue_sizes=[64], device_features=0)
        def queue_notify(self, index):
            self.serve_queue(index, lambda chain: chain.write(chain.read_all()))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Callable, Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

from xvm.devices.virtio.queue import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    DescriptorChain,
    Virtqueue,
    VirtqueueError,
)
from xvm.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

# Device status bits (2.1).
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1  # the guest noticed the device
VIRTIO_CONFIG_S_DRIVER = 2  # the guest has a driver for it
VIRTIO_CONFIG_S_DRIVER_OK = 4  # the driver is ready: the device may run
VIRTIO_CONFIG_S_FEATURES_OK = 8  # feature negotiation complete
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40  # the device hit an error it cannot recover from
VIRTIO_CONFIG_S_FAILED = 0x80  # the driver gave up on the device

#: Feature bit 32: the device follows virtio 1.x (required for modern transports, 6.1).
VIRTIO_F_VERSION_1 = 32
#: Transport feature bits the base implements and always offers.
BASE_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_INDIRECT_DESC) | (1 << VIRTIO_F_EVENT_IDX)

# Device IDs (5).
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4


class VirtioInterrupt(Protocol):
    """How a device's notifications reach the guest; installed by the transport."""

    def signal_queue(self, index: int) -> None: ...

    def signal_config(self) -> None: ...


class _NoInterrupt:
    """Before a transport is attached (unit tests of device logic): notifications are counted."""

    def __init__(self) -> None:
        self.queue_signals = 0
        self.config_signals = 0

    def signal_queue(self, index: int) -> None:
        self.queue_signals += 1

    def signal_config(self) -> None:
        self.config_signals += 1


class VirtioDevice:
    """Device logic of one virtio device; subclasses set `device_id` and override the hooks.

    Hooks: `config_read`/`config_write` (device-specific configuration, 4.1.4.6),
    `activate` (DRIVER_OK: start backends), `reset` (call super().reset()),
    `queue_notify` (the driver kicked a queue), `close` (VM shutdown).
    """

    device_id = 0

    def __init__(self, memory: GuestMemory, queue_sizes: Sequence[int], device_features: int) -> None:
        self.memory = memory
        self.queues = [Virtqueue(memory, size) for size in queue_sizes]
        self.avail_features = device_features | BASE_FEATURES
        self.acked_features = 0
        self.status = 0
        self.activated = False
        self.needs_reset = False
        #: Bumped whenever the device changes its configuration space (4.1.4.3 config_generation).
        self.config_generation = 0
        self.interrupt: VirtioInterrupt = _NoInterrupt()
        #: Requests the driver broke (logged once each device life, counted always).
        self.guest_errors = 0

    @property
    def name(self) -> str:
        return type(self).__name__

    def has_feature(self, bit: int) -> bool:
        """True when feature `bit` was negotiated."""
        return bool(self.acked_features >> bit & 1)

    def set_dma_notifier(self, notify: Optional[Callable[[int, int], None]]) -> None:
        """Have every buffer write reported as (gpa, length) (the bt engine keeps code coherent)."""
        for queue in self.queues:
            queue.on_write = notify

    # --- hooks for subclasses ------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """Device-specific configuration space read; out-of-range bytes read as 0."""
        data = self.config_space()[offset:offset + size] if offset >= 0 else b""
        return int.from_bytes(data.ljust(size, b"\0"), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Device-specific configuration space write (read-only by default: dropped)."""

    def config_space(self) -> bytes:
        """The configuration structure as bytes, for devices whose config is a plain struct."""
        return b""

    def activate(self) -> None:
        """DRIVER_OK: queues are validated and the device may start (subclasses start backends)."""

    def reset(self) -> None:
        """The driver wrote 0 to the status: back to the power-on state (subclasses stop work first)."""
        self.status = 0
        self.acked_features = 0
        self.activated = False
        self.needs_reset = False
        for queue in self.queues:
            queue.reset()

    def queue_notify(self, index: int) -> None:
        """The driver kicked queue `index`; subclasses process it."""

    def close(self) -> None:
        """The VM is shutting down: release host resources (threads, files)."""

    # --- status state machine (2.1, 3.1.1) ------------------------------------------
    def write_status(self, value: int) -> None:
        """The driver wrote the device status register."""
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        old = self.status
        if value & VIRTIO_CONFIG_S_FEATURES_OK and not old & VIRTIO_CONFIG_S_FEATURES_OK \
                and not self._features_acceptable():
            value &= ~VIRTIO_CONFIG_S_FEATURES_OK
        self.status = value | (old & VIRTIO_CONFIG_S_NEEDS_RESET)
        if value & VIRTIO_CONFIG_S_DRIVER_OK and not self.activated:
            if not value & VIRTIO_CONFIG_S_FEATURES_OK:
                self.set_needs_reset("DRIVER_OK without FEATURES_OK")
                return
            self._activate()

    def write_driver_features(self, word: int, value: int) -> None:
        """driver_feature word `word` (0: bits 0-31, 1: bits 32-63); ignored after FEATURES_OK (3.1.1)."""
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK or word not in (0, 1):
            return
        shift = 32 * word
        self.acked_features = (self.acked_features & ~(0xFFFFFFFF << shift)) | ((value & 0xFFFFFFFF) << shift)

    def device_feature_word(self, word: int) -> int:
        """device_feature word `word`; 0 beyond bit 63."""
        return (self.avail_features >> (32 * word)) & 0xFFFFFFFF if word in (0, 1) else 0

    def enable_queue(self, index: int) -> None:
        """The driver set queue_enable (queue_ready on MMIO); checked now if the device already runs."""
        queue = self.queues[index]
        queue.ready = True
        if self.activated:
            queue.event_idx = self.has_feature(VIRTIO_F_EVENT_IDX)
            queue.indirect = self.has_feature(VIRTIO_F_INDIRECT_DESC)
            try:
                queue.validate()
            except VirtqueueError as error:
                self.set_needs_reset(f"queue {index}: {error}")

    def _features_acceptable(self) -> bool:
        if self.acked_features & ~self.avail_features:
            log.info("%s: driver accepted features %#x that were not offered", self.name,
                     self.acked_features & ~self.avail_features)
            return False
        if not self.has_feature(VIRTIO_F_VERSION_1):
            log.info("%s: driver did not accept VIRTIO_F_VERSION_1 (a legacy driver?)", self.name)
            return False
        return True

    def _activate(self) -> None:
        for index, queue in enumerate(self.queues):
            queue.event_idx = self.has_feature(VIRTIO_F_EVENT_IDX)
            queue.indirect = self.has_feature(VIRTIO_F_INDIRECT_DESC)
            if queue.ready:
                try:
                    queue.validate()
                except VirtqueueError as error:
                    self.set_needs_reset(f"queue {index}: {error}")
                    return
        self.activated = True
        self.activate()

    # --- notifications -------------------------------------------------------------
    def signal_used(self, index: int) -> None:
        """Interrupt the driver for queue `index` if it wants one (event index / NO_INTERRUPT)."""
        if self.queues[index].needs_interrupt():
            self.interrupt.signal_queue(index)

    def signal_config_change(self) -> None:
        """The configuration space changed (or NEEDS_RESET was set): tell the driver."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK:
            self.interrupt.signal_config()

    def set_needs_reset(self, reason: str) -> None:
        """The driver broke the rules: stop serving until it resets the device (2.1.2)."""
        self.guest_errors += 1
        if self.needs_reset:
            return
        log.warning("%s: %s; the device needs a reset", self.name, reason)
        self.needs_reset = True
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET
        self.signal_config_change()

    @property
    def serving(self) -> bool:
        """Activated and not broken: queues may be processed."""
        return self.activated and not self.needs_reset

    def serve_queue(self, index: int, handle: Callable[[DescriptorChain], int]) -> int:
        """Pop every available chain of queue `index`, `handle` each (returns bytes written), push it.

        Interrupts once at the end if the driver wants one. A malformed chain
        marks the device NEEDS_RESET. Returns the number of chains served.
        """
        if not self.serving or not 0 <= index < len(self.queues):
            return 0
        queue = self.queues[index]
        served = 0
        try:
            while True:
                chain = queue.pop()
                if chain is None:
                    break
                queue.push(chain.head, handle(chain))
                served += 1
        except VirtqueueError as error:
            self.set_needs_reset(f"queue {index}: {error}")
        if served:
            self.signal_used(index)
        return served
