"""virtio-blk: a disk on one request queue (virtio 1.2 section 5.2).

Each request is one descriptor chain laid out as

    struct virtio_blk_req {           driver-readable part
        le32 type; le32 reserved; le64 sector;
        u8 data[];                    readable for OUT, writable for IN / GET_ID
        u8 status;                    the last writable byte
    };

With VIRTIO_F_VERSION_1 the device must not assume where descriptor
boundaries fall (5.2.6.4 / 2.7.4 "message framing"), so the header, data and
status are cut out of the chain's readable and writable (gpa, len) lists by
byte position rather than by descriptor.

Data moves between the image file and guest RAM without a copy in Python:
the chain's guest buffers become `GuestMemory.view` windows handed to
preadv/pwritev (xvm/devices/backends/block_file.py).

Every notify drains the whole available ring, so all the requests the guest
queued (Linux keeps up to queue-size in flight) complete in one pass and one
interrupt. A guest mistake never reaches the host: a request outside the
disk, a write to a read-only disk or a data buffer outside RAM completes with
VIRTIO_BLK_S_IOERR; a chain with no room for the status byte cannot be
answered at all, so the device asks for a reset (DEVICE_NEEDS_RESET).

    disk = BlockDevice(memory, DiskConfig(Path("rootfs.img")))
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from typing import Optional

from xvm.config import DiskConfig
from xvm.devices.backends.block_file import SECTOR_SIZE, RawFile
from xvm.devices.virtio.device import VIRTIO_ID_BLOCK, VirtioDevice
from xvm.devices.virtio.queue import DescriptorChain, VirtqueueError
from xvm.errors import GuestMemoryError
from xvm.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

# Feature bits (virtio 1.2 5.2.3).
VIRTIO_BLK_F_SEG_MAX = 1 << 2  # seg_max in config: most data segments per request
VIRTIO_BLK_F_RO = 1 << 5  # the disk is read-only
VIRTIO_BLK_F_BLK_SIZE = 1 << 6  # blk_size in config: the optimal block size
VIRTIO_BLK_F_FLUSH = 1 << 9  # VIRTIO_BLK_T_FLUSH is supported (write-back cache)

# Request types (5.2.6).
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8

# Status byte values (5.2.6).
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

#: Length of the ID string GET_ID returns (not NUL-terminated when this long).
VIRTIO_BLK_ID_BYTES = 20

QUEUE_SIZE = 256
# Header and status take two descriptors, the rest may be data (QEMU's choice).
SEG_MAX = QUEUE_SIZE - 2

_HEADER = struct.Struct("<IIQ")  # type, reserved (ioprio), sector
# struct virtio_blk_config up to blk_size (5.2.4): capacity, size_max, seg_max,
# geometry (cylinders, heads, sectors), blk_size.
_CONFIG = struct.Struct("<QIIHBBI")

Segments = list  # list of (gpa, length)


def split_segments(segments: Sequence[tuple[int, int]], count: int) -> tuple[Segments, Segments]:
    """Cut a (gpa, length) list after its first `count` bytes: (head, rest).

    `head` is shorter than `count` bytes when the list is.
    """
    head: Segments = []
    rest: Segments = []
    for gpa, length in segments:
        if count <= 0:
            rest.append((gpa, length))
        elif length <= count:
            head.append((gpa, length))
            count -= length
        else:
            head.append((gpa, count))
            rest.append((gpa + count, length - count))
            count = 0
    return head, rest


class BlockDevice(VirtioDevice):
    """A virtio-blk disk backed by a raw image file."""

    device_id = VIRTIO_ID_BLOCK

    def __init__(self, memory: GuestMemory, disk: DiskConfig, backend: Optional[RawFile] = None) -> None:
        self.backend = backend if backend is not None else RawFile(disk.path, disk.read_only, disk.cache)
        features = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH
        if self.backend.read_only:
            features |= VIRTIO_BLK_F_RO
        super().__init__(memory, [QUEUE_SIZE], features)
        self.serial = _disk_serial(self.backend)
        self._config = _CONFIG.pack(self.backend.sectors, 0, SEG_MAX, 0, 0, 0, SECTOR_SIZE)
        #: Requests completed per status, for statistics and tests.
        self.completed = {VIRTIO_BLK_S_OK: 0, VIRTIO_BLK_S_IOERR: 0, VIRTIO_BLK_S_UNSUPP: 0}

    def config_space(self) -> bytes:
        """struct virtio_blk_config; read-only for the driver (no CONFIG_WCE offered)."""
        return self._config

    # --- requests -----------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        """Complete every request the driver has made available, then interrupt once (5.2.6)."""
        if index == 0:
            self.serve_queue(0, self.handle_request)

    def handle_request(self, chain: DescriptorChain) -> int:
        """Carry out one request and write its status; return the bytes written into the chain.

        A chain without even a writable status byte cannot be answered: that
        raises VirtqueueError, which makes the device NEEDS_RESET.
        """
        if chain.writable_len < 1:
            raise VirtqueueError("virtio-blk request without a writable status byte")
        data_in, status_seg = split_segments(chain.writable, chain.writable_len - 1)
        data_out = split_segments(chain.readable, _HEADER.size)[1]
        used = 0
        if chain.readable_len < _HEADER.size:
            status = VIRTIO_BLK_S_IOERR
        else:
            try:
                kind, _, sector = _HEADER.unpack(chain.read(0, _HEADER.size))
                status, used = self._execute(kind, sector, data_out, data_in)
            except (OSError, GuestMemoryError) as error:
                # The host file failed (disk full, EIO), or a buffer the queue checked
                # is still not one window of RAM: the guest sees an I/O error.
                log.warning("virtio-blk %s: %s", self.backend.path, error)
                status, used = VIRTIO_BLK_S_IOERR, 0
        self._dma_write(status_seg[0][0], bytes((status,)))
        self.completed[status] = self.completed.get(status, 0) + 1
        return used + 1

    def _execute(self, kind: int, sector: int, data_out: Segments, data_in: Segments) -> tuple[int, int]:
        """Run one request; (status, bytes written into data_in)."""
        if kind == VIRTIO_BLK_T_IN:
            length = sum(n for _, n in data_in)
            if not self._in_range(sector, length):
                return VIRTIO_BLK_S_IOERR, 0
            views = self._views(data_in)
            try:
                self.backend.read_into(sector * SECTOR_SIZE, views)
            finally:
                _release(views)
            self._report_writes(data_in)
            return VIRTIO_BLK_S_OK, length
        if kind == VIRTIO_BLK_T_OUT:
            length = sum(n for _, n in data_out)
            if self.backend.read_only or not self._in_range(sector, length):
                return VIRTIO_BLK_S_IOERR, 0
            views = self._views(data_out)
            try:
                self.backend.write_from(sector * SECTOR_SIZE, views)
            finally:
                _release(views)
            return VIRTIO_BLK_S_OK, 0
        if kind == VIRTIO_BLK_T_FLUSH:
            # Completes only once the data is on stable storage: this is what makes
            # the guest's sync(1) survive a SIGKILL of the VMM.
            if not self.backend.read_only:
                self.backend.flush()
            return VIRTIO_BLK_S_OK, 0
        if kind == VIRTIO_BLK_T_GET_ID:
            length = min(sum(n for _, n in data_in), VIRTIO_BLK_ID_BYTES)
            done = 0
            for gpa, count in split_segments(data_in, length)[0]:
                self._dma_write(gpa, self.serial[done:done + count])
                done += count
            return VIRTIO_BLK_S_OK, length
        return VIRTIO_BLK_S_UNSUPP, 0

    def _in_range(self, sector: int, length: int) -> bool:
        """Whole sectors, all inside the disk (QEMU virtio_blk_sect_range_ok)."""
        if length % SECTOR_SIZE:
            return False
        return sector + length // SECTOR_SIZE <= self.backend.sectors

    def _views(self, segments: Segments) -> list[memoryview]:
        views = []
        try:
            for gpa, length in segments:
                views.append(self.memory.view(gpa, length))
        except GuestMemoryError:
            _release(views)
            raise
        return views

    def _dma_write(self, gpa: int, data: bytes) -> None:
        self.memory.write(gpa, data)
        self._report_writes([(gpa, len(data))])

    def _report_writes(self, segments: Segments) -> None:
        """Tell the engine which guest RAM the device wrote (the bt engine drops stale code)."""
        notify = self.queues[0].on_write
        if notify is not None:
            for gpa, length in segments:
                notify(gpa, length)

    def close(self) -> None:
        """Release the image file (and its lock)."""
        self.backend.close()


def _release(views: Sequence[memoryview]) -> None:
    """Drop the windows on guest RAM now, not at garbage collection (PyPy)."""
    for view in views:
        view.release()


def _disk_serial(backend: RawFile) -> bytes:
    """A serial number stable for one image file: its device and inode (as Firecracker does)."""
    st = os.fstat(backend.fd)
    return f"xvm{st.st_dev:x}-{st.st_ino:x}".encode()[:VIRTIO_BLK_ID_BYTES].ljust(VIRTIO_BLK_ID_BYTES, b"\0")
