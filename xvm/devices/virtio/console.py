"""virtio-console with a single port, the guest's hvc0 (virtio spec 1.2 section 5.3).

Without VIRTIO_CONSOLE_F_MULTIPORT the device has one port and two queues:
0 receiveq (host -> guest) and 1 transmitq (guest -> host); Linux
(drivers/char/virtio_console.c) then makes port 0 a console, hvc0, usable
with `console=hvc0`. Guest output goes to the injected `output` callable the
moment the driver kicks the transmit queue. Host input from `receive()` (the
console thread) waits in a bounded buffer until the driver has posted
receive buffers; what does not fit is refused and the caller retries, as
with the UART.

VIRTIO_CONSOLE_F_EMERG_WRITE is offered: a write to `emerg_wr` prints one
character even before the queues exist (5.3.4).

    console = VirtioConsole(memory, sys.stdout.buffer.write)
    console.receive(b"ls\\n")
"""

from __future__ import annotations

import struct
import threading
from typing import Callable

from xvm.devices.virtio.device import VIRTIO_ID_CONSOLE, VirtioDevice
from xvm.devices.virtio.queue import DescriptorChain, VirtqueueError
from xvm.memory.guest_memory import GuestMemory

VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_MULTIPORT = 1
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

RECEIVEQ = 0
TRANSMITQ = 1
QUEUE_SIZE = 128
#: Offset of emerg_wr in struct virtio_console_config {cols u16, rows u16, max_nr_ports u32, emerg_wr u32}.
EMERG_WR_OFFSET = 8
#: Host input held while the guest has no receive buffers posted.
INPUT_LIMIT = 64 * 1024
#: Bytes passed to `output` per transmit request at most (a chain can be up to 4 GiB).
MAX_TRANSMIT = 1 << 20


class VirtioConsole(VirtioDevice):
    """One console port: transmit to `output`, receive from `receive()`."""

    device_id = VIRTIO_ID_CONSOLE

    def __init__(self, memory: GuestMemory, output: Callable[[bytes], None]) -> None:
        super().__init__(memory, queue_sizes=[QUEUE_SIZE, QUEUE_SIZE],
                         device_features=1 << VIRTIO_CONSOLE_F_EMERG_WRITE)
        self.output = output
        self._input = bytearray()
        self._lock = threading.Lock()

    def config_space(self) -> bytes:
        return struct.pack("<HHII", 0, 0, 1, 0)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == EMERG_WR_OFFSET and self.has_feature(VIRTIO_CONSOLE_F_EMERG_WRITE):
            self.output(bytes((value & 0xFF,)))

    def reset(self) -> None:
        with self._lock:
            super().reset()

    def queue_notify(self, index: int) -> None:
        if index == TRANSMITQ:
            self.serve_queue(TRANSMITQ, self._transmit)
        elif index == RECEIVEQ:
            self._deliver()

    def activate(self) -> None:
        self._deliver()

    def _transmit(self, chain: DescriptorChain) -> int:
        self.output(chain.read(0, MAX_TRANSMIT))
        return 0

    def receive(self, data: bytes) -> int:
        """Host input (console thread); returns how many bytes were accepted."""
        with self._lock:
            accepted = max(0, min(len(data), INPUT_LIMIT - len(self._input)))
            self._input += data[:accepted]
        self._deliver()
        return accepted

    def _deliver(self) -> None:
        """Copy waiting input into posted receive buffers."""
        with self._lock:
            if not self._input or not self.serving:
                return
            queue = self.queues[RECEIVEQ]
            served = 0
            try:
                while self._input:
                    chain = queue.pop()
                    if chain is None:
                        break
                    written = chain.write(bytes(self._input))
                    del self._input[:written]
                    queue.push(chain.head, written)
                    served += 1
            except VirtqueueError as error:
                self.set_needs_reset(f"queue {RECEIVEQ}: {error}")
            if served:
                self.signal_used(RECEIVEQ)

    @property
    def pending_input(self) -> int:
        return len(self._input)
