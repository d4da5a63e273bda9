"""TAP devices: the host end of a virtio-net interface on a host bridge or route.

`--net tap` makes a new interface (xvmtap0, xvmtap1, ...) that lives as long
as the VM; `--net tap=NAME` attaches to NAME, creating it when missing or
joining a persistent one made with `ip tuntap add NAME mode tap`. Either way
the host side still needs an address or a bridge, which is the user's (or
the test's) business, as with QEMU's tap netdev.

The device is opened IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (Linux
Documentation/networking/tuntap.rst) with a 12-byte vnet header
(TUNSETVNETHDRSZ): that is exactly struct virtio_net_hdr_v1, so frames
travel between the guest's buffers and the tap with the guest's own header
in front, and checksum/TSO offloads cost nothing here: the host kernel
checks and segments. TUNSETOFFLOAD tells the tap which partial-checksum and
GSO frames the guest agreed to receive.

    tap = TapBackend("xvmtap0")
    tap.send([header12 + frame])
    frame_with_header = tap.recv()   # blocks; None once closed
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
from collections.abc import Sequence
from typing import Optional

from xvm.errors import ConfigError, DeviceError

# linux/if_tun.h
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int): attach the fd to an interface
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int): offloads the reader accepts
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int): length of the vnet header
IFF_TAP = 0x0002  # Ethernet frames (not IP packets)
IFF_NO_PI = 0x1000  # no 4-byte packet-information prefix
IFF_VNET_HDR = 0x4000  # each frame starts with a struct virtio_net_hdr
TUN_F_CSUM = 0x01  # the reader takes frames with a partial checksum
TUN_F_TSO4 = 0x02  # ... TCPv4 segmentation offload frames (needs TUN_F_CSUM)
TUN_F_TSO6 = 0x04  # ... TCPv6 segmentation offload frames (needs TUN_F_CSUM)

# linux/sockios.h and linux/if.h, to bring a created interface up.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFNAMSIZ = 16
_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, rest of the union

#: Length of the virtio_net_hdr (v1, with num_buffers) each frame carries.
VNET_HDR_LEN = 12
# Largest frame a read returns: a 64 KiB GSO frame, its Ethernet header and vnet header.
MAX_FRAME = 65536 + 14 + VNET_HDR_LEN

TUN_PATH = "/dev/net/tun"


class TapBackend:
    """One TAP interface opened for a virtio-net device."""

    #: Frames carry a VNET_HDR_LEN-byte virtio_net_hdr in both directions.
    vnet_hdr = True

    def __init__(self, ifname: Optional[str] = None) -> None:
        if ifname is not None and not 0 < len(ifname.encode()) < IFNAMSIZ:
            raise ConfigError(f"--net tap={ifname!r}: interface names are 1 to {IFNAMSIZ - 1} bytes")
        try:
            self.fd = os.open(TUN_PATH, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            raise ConfigError(
                f"--net tap: cannot open {TUN_PATH} ({error.strerror}): load the tun module "
                "(modprobe tun) and run as root or with CAP_NET_ADMIN, or use --net user"
            ) from error
        try:
            # A name with %d makes the kernel pick the first free number.
            request = _IFREQ_FLAGS.pack((ifname or "xvmtap%d").encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            try:
                # SAFETY: ifreq is 40 bytes on Linux; the kernel writes the chosen name back into it.
                reply = fcntl.ioctl(self.fd, TUNSETIFF, request)
            except OSError as error:
                raise ConfigError(
                    f"--net tap{'=' + ifname if ifname else ''}: TUNSETIFF failed ({error.strerror}): "
                    "run as root or with CAP_NET_ADMIN, or create the interface for your user with "
                    "`ip tuntap add NAME mode tap user $USER` and pass --net tap=NAME"
                ) from error
            self.ifname = _IFREQ_FLAGS.unpack(reply)[0].rstrip(b"\0").decode()
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            self.set_offloads(csum=False, tso4=False, tso6=False)
            _bring_up(self.ifname)
        except BaseException:
            os.close(self.fd)
            raise
        # Wakes a recv() blocked in poll when close() is called from another thread.
        self._stop_r, self._stop_w = os.pipe()

    def set_offloads(self, csum: bool, tso4: bool, tso6: bool) -> None:
        """Say which frames the guest can take: partial checksums, TSO over IPv4/IPv6."""
        flags = 0
        if csum:  # TSO frames always carry a partial checksum, so they need TUN_F_CSUM
            flags = TUN_F_CSUM | (TUN_F_TSO4 if tso4 else 0) | (TUN_F_TSO6 if tso6 else 0)
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def send(self, parts: Sequence[bytes]) -> None:
        """Write one frame (vnet header first) gathered from `parts`."""
        try:
            if hasattr(os, "writev"):
                os.writev(self.fd, list(parts))
            else:  # PyPy 3.9
                os.write(self.fd, b"".join(parts))
        except OSError as error:
            # The interface is down or its queue is full: the frame is lost, like on a wire.
            if error.errno not in (errno.EIO, errno.EAGAIN, errno.ENOBUFS, errno.EINVAL):
                raise DeviceError(f"tap {self.ifname}: write failed ({error.strerror})") from error

    def recv(self) -> Optional[bytes]:
        """The next frame from the host (vnet header first); None after interrupt()."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            if any(fd == self._stop_r for fd, _ in events):
                return None
            try:
                return os.read(self.fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                raise DeviceError(f"tap {self.ifname}: read failed ({error.strerror})") from error

    def interrupt(self) -> None:
        """Make a blocked recv() (in another thread) return None, now and from then on."""
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")

    def close(self) -> None:
        """Detach from the interface (a created one disappears).

        The caller joins its reader thread after interrupt() first, so no
        thread is inside recv() when the descriptors go.
        """
        if self.fd < 0:
            return
        for fd in (self.fd, self._stop_r, self._stop_w):
            os.close(fd)
        self.fd = self._stop_r = self._stop_w = -1


def _bring_up(ifname: str) -> None:
    """Set IFF_UP so frames flow as soon as the host side is configured."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name = ifname.encode()
        flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name, 0)))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _IFREQ_FLAGS.pack(name, flags | IFF_UP))
