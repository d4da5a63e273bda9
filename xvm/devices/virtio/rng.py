"""virtio-rng, the entropy device (virtio spec 1.2 section 5.4).

One request queue, no configuration space, no device features: the driver
posts device-writable buffers and the device fills them with host entropy
(Linux drivers/char/hw_random/virtio-rng.c feeds them to /dev/hwrng and the
kernel's pool). Each request is bounded by MAX_BYTES_PER_REQUEST so a guest
posting huge buffers cannot make one kick cost the VMM unbounded time; the
driver simply asks again. Model: kvmtool virtio/rng.c.

    rng = VirtioRng(memory, HostEntropy().read)
"""

from __future__ import annotations

from typing import Callable, Optional

from xvm.devices.backends.entropy import HostEntropy
from xvm.devices.virtio.device import VIRTIO_ID_RNG, VirtioDevice
from xvm.devices.virtio.queue import DescriptorChain
from xvm.memory.guest_memory import GuestMemory

QUEUE_SIZE = 256
#: Bytes served per request (Linux asks for at most 64 bytes at a time anyway).
MAX_BYTES_PER_REQUEST = 64 * 1024


class VirtioRng(VirtioDevice):
    """Fills every writable buffer posted on queue 0 with host entropy."""

    device_id = VIRTIO_ID_RNG

    def __init__(self, memory: GuestMemory, entropy: Optional[Callable[[int], bytes]] = None) -> None:
        super().__init__(memory, queue_sizes=[QUEUE_SIZE], device_features=0)
        self.entropy = entropy if entropy is not None else HostEntropy().read
        self.bytes_served = 0

    def queue_notify(self, index: int) -> None:
        self.serve_queue(index, self._fill)

    def _fill(self, chain: DescriptorChain) -> int:
        length = min(chain.writable_len, MAX_BYTES_PER_REQUEST)
        written = chain.write(self.entropy(length)) if length else 0
        self.bytes_served += written
        return written
