"""virtio-net: an Ethernet interface with one receive and one transmit queue (virtio 1.2 5.1).

Every frame in either direction is preceded by struct virtio_net_hdr, 12 bytes
with VIRTIO_F_VERSION_1 (5.1.6):

    u8 flags; u8 gso_type; le16 hdr_len; le16 gso_size;
    le16 csum_start; le16 csum_offset; le16 num_buffers;

* Transmit (queue 1): the vCPU's kick drains the ring; each chain's readable
  bytes are one header + frame. A TAP backend takes them as they are (its
  vnet header is this very struct), so checksum and segmentation offloads
  (CSUM, HOST_TSO4/6) are done by the host kernel; other backends get the
  frame without the header, and then no offload is offered.
* Receive (queue 0): a reader thread per device blocks on the backend,
  waits for the driver's buffers when the ring is empty (the driver kicks
  queue 0 when it adds some), writes header + frame into the next chain and
  interrupts. A frame that finds no buffer for RX_STALL_SECONDS, or does not
  fit the buffer, is dropped and counted, as a NIC drops on overflow.

Without VIRTIO_NET_F_MRG_RXBUF each frame takes one chain, so Linux posts
chains big enough for a 64 KiB GSO frame when GUEST_TSO is negotiated
(drivers/net/virtio_net.c, add_recvbuf_big); num_buffers is then always 1
(5.1.6.3.2).

The reader thread touches only the receive queue, under `_rx_lock`; reset
and activation take the same lock, so a reset never races a delivery.

    nic = NetDevice(memory, NetConfig("tap", ifname="xvmtap0"))
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Optional

from xvm.config import NetConfig
from xvm.devices.virtio.device import VIRTIO_ID_NET, VirtioDevice
from xvm.devices.virtio.queue import DescriptorChain, VirtqueueError
from xvm.errors import ConfigError, DeviceError
from xvm.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

# Feature bits (5.1.3).
VIRTIO_NET_F_CSUM = 0  # device handles packets with a partial checksum (guest TX offload)
VIRTIO_NET_F_GUEST_CSUM = 1  # driver handles packets with a partial checksum (RX)
VIRTIO_NET_F_MAC = 5  # the device has a MAC address in its config
VIRTIO_NET_F_GUEST_TSO4 = 7  # driver takes TCPv4 GSO frames
VIRTIO_NET_F_GUEST_TSO6 = 8  # driver takes TCPv6 GSO frames
VIRTIO_NET_F_HOST_TSO4 = 11  # device takes TCPv4 GSO frames
VIRTIO_NET_F_HOST_TSO6 = 12  # device takes TCPv6 GSO frames
VIRTIO_NET_F_STATUS = 16  # config status field (link state) is valid

VIRTIO_NET_S_LINK_UP = 1

#: struct virtio_net_hdr_v1 length.
NET_HDR_LEN = 12
# A header for frames from a backend without one: no offload, num_buffers 1.
_PLAIN_RX_HDR = bytes(10) + (1).to_bytes(2, "little")
_NUM_BUFFERS_1 = (1).to_bytes(2, "little")

RX_QUEUE = 0
TX_QUEUE = 1
QUEUE_SIZE = 256
#: Largest transmit chain accepted: a 64 KiB GSO frame, its Ethernet header and the vnet header.
MAX_TX_BYTES = NET_HDR_LEN + 14 + 65536
#: How long a received frame waits for the driver to post a buffer before it is dropped.
RX_STALL_SECONDS = 1.0

OFFLOAD_FEATURES = (
    1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6 | 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6
)


def parse_mac(text: str) -> bytes:
    """'52:54:00:12:34:56' -> 6 bytes; ConfigError for anything else or a multicast address."""
    parts = text.replace("-", ":").split(":")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        mac = b""
    if len(parts) != 6 or len(mac) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ConfigError(f"--net mac={text!r} is not a MAC address: use six hex bytes like 02:00:00:12:34:56")
    if mac[0] & 1:
        raise ConfigError(f"--net mac={text}: the first byte is odd, a multicast address: use an even one (02:...)")
    return mac


def random_mac() -> bytes:
    """A random unicast, locally administered address (IEEE 802: bit 0 clear, bit 1 set)."""
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFC) | 0x02
    return bytes(mac)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def open_backend(net: NetConfig):
    """The host end `--net` asks for: a TAP device or a passt process."""
    if net.mode == "tap":
        from xvm.devices.backends.tap import TapBackend

        return TapBackend(net.ifname)
    if net.mode == "user":
        from xvm.devices.backends.passt import PasstBackend

        return PasstBackend()
    raise ConfigError(f"--net {net.mode!r} is unknown: use --net tap[=NAME] or --net user")


class NetDevice(VirtioDevice):
    """A virtio-net interface on a TAP or passt backend.

    `backend` needs `vnet_hdr` (frames carry the 12-byte header), `send(parts)`,
    `recv() -> Optional[bytes]` (blocking), `set_offloads(csum, tso4, tso6)`,
    `interrupt()` and `close()`.
    """

    device_id = VIRTIO_ID_NET

    def __init__(self, memory: GuestMemory, net: NetConfig, backend=None) -> None:
        self.mac = parse_mac(net.mac) if net.mac else random_mac()
        self.backend = backend if backend is not None else open_backend(net)
        features = 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
        if self.backend.vnet_hdr:
            features |= OFFLOAD_FEATURES
        super().__init__(memory, [QUEUE_SIZE, QUEUE_SIZE], features)
        self._config = self.mac + VIRTIO_NET_S_LINK_UP.to_bytes(2, "little")
        self._rx_lock = threading.Condition()
        self._rx_thread: Optional[threading.Thread] = None
        self._closing = False
        self.rx_frames = self.tx_frames = self.rx_dropped = self.tx_dropped = 0

    def config_space(self) -> bytes:
        """struct virtio_net_config: mac, status (5.1.4)."""
        return self._config

    # --- lifecycle ------------------------------------------------------------
    def activate(self) -> None:
        """DRIVER_OK: tell the backend what the driver receives, start the reader thread."""
        self.backend.set_offloads(
            csum=self.has_feature(VIRTIO_NET_F_GUEST_CSUM),
            tso4=self.has_feature(VIRTIO_NET_F_GUEST_TSO4),
            tso6=self.has_feature(VIRTIO_NET_F_GUEST_TSO6),
        )
        if self._rx_thread is None:
            self._rx_thread = threading.Thread(target=self._rx_loop, name=f"virtio-net {self.name} rx", daemon=True)
            self._rx_thread.start()

    def write_status(self, value: int) -> None:
        # Status changes (reset, activation) exclude a delivery in progress.
        with self._rx_lock:
            super().write_status(value)
            self._rx_lock.notify_all()

    def enable_queue(self, index: int) -> None:
        # Re-validating the receive queue must not race the reader thread's pop().
        with self._rx_lock:
            super().enable_queue(index)
            self._rx_lock.notify_all()

    def close(self) -> None:
        """Stop the reader thread, then release the backend (a created TAP disappears)."""
        with self._rx_lock:
            self._closing = True
            self._rx_lock.notify_all()
        self.backend.interrupt()
        if self._rx_thread is not None:
            self._rx_thread.join(timeout=5)
        self.backend.close()

    # --- queues ----------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        if index == TX_QUEUE:
            self.serve_queue(TX_QUEUE, self._transmit)
        elif index == RX_QUEUE:
            # New receive buffers: wake a frame waiting for them.
            with self._rx_lock:
                self._rx_lock.notify_all()

    def _transmit(self, chain: DescriptorChain) -> int:
        """Send one header + frame chain to the backend; nothing is written back."""
        if not NET_HDR_LEN + 14 <= chain.readable_len <= MAX_TX_BYTES:
            self.tx_dropped += 1
            return 0
        if self.backend.vnet_hdr:
            views = [self.memory.view(gpa, length) for gpa, length in chain.readable]
            try:
                self.backend.send(views)
            finally:
                for view in views:
                    view.release()
        else:
            self.backend.send([chain.read(NET_HDR_LEN, chain.readable_len - NET_HDR_LEN)])
        self.tx_frames += 1
        return 0

    def _rx_loop(self) -> None:
        """Reader thread: host frames into the receive queue until close()."""
        while True:
            try:
                frame = self.backend.recv()
            except DeviceError as error:
                log.error("%s", error)
                return
            if frame is None:
                return
            if self.backend.vnet_hdr:
                if len(frame) < NET_HDR_LEN:
                    continue
                # bytes, not a memoryview: PyPy's mmap slice assignment takes only bytes.
                parts = (frame[:10] + _NUM_BUFFERS_1, frame[NET_HDR_LEN:])
            else:
                parts = (_PLAIN_RX_HDR, frame)
            try:
                self.receive(parts, RX_STALL_SECONDS)
            except Exception:  # a bug here must not silently end the interface's receive path
                log.exception("%s: receive failed; the frame is dropped", self.name)
                self.rx_dropped += 1

    def receive(self, parts: Sequence[bytes], wait: float = 0.0) -> bool:
        """Put one header + frame into the next receive chain, waiting up to `wait` s for one.

        Returns True when the frame was delivered (False: dropped).
        """
        deadline = time.monotonic() + wait
        length = sum(len(p) for p in parts)
        with self._rx_lock:
            while True:
                if self._closing or not self.serving:
                    self.rx_dropped += 1
                    return False
                try:
                    chain = self.queues[RX_QUEUE].pop()
                except VirtqueueError as error:
                    self.set_needs_reset(f"queue {RX_QUEUE}: {error}")
                    self.rx_dropped += 1
                    return False
                if chain is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    self.rx_dropped += 1
                    return False
                self._rx_lock.wait(left)
            written = 0
            if chain.writable_len < length:
                # Hand the buffer back empty; Linux counts a length error and reposts it.
                self.rx_dropped += 1
            else:
                for part in parts:
                    written += chain.write(part, written)
                self.rx_frames += 1
            self.queues[RX_QUEUE].push(chain.head, written)
            # Under the lock: a reset must not slip between push and the event-index check.
            self.signal_used(RX_QUEUE)
        return written > 0
