"""User-mode networking through passt: `--net user`, no privileges needed.

passt (https://passt.top, Debian package `passt`) is a user-space network
stack that translates the guest's Ethernet frames into ordinary host sockets:
it answers DHCP/ARP/NDP for the guest and maps the gateway address to the
host's loopback, so a guest reaches a server on the host's 127.0.0.1 at the
gateway's address (192.0.2.1 style, whatever the host's default route says).

xvm makes a connected AF_UNIX stream socket pair and hands one end to
`passt --fd N --foreground --one-off`: passt then speaks the QEMU "stream"
netdev protocol on it (each frame preceded by its length as a 32-bit
big-endian integer, QEMU net/stream.c) and exits when xvm closes its end.
Frames carry no virtio header, so the device offers no offloads with this
backend.

    user = PasstBackend()
    user.send([frame])
    frame = user.recv()   # blocks; None once interrupted or passt exits
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from xvm.errors import ConfigError, DeviceError

_LENGTH = struct.Struct(">I")
#: Largest frame passt sends (its default MTU 65520 plus the Ethernet header).
MAX_FRAME = 65535 + 14
# How long passt gets to fail on bad options before xvm trusts it is running.
STARTUP_CHECK_SECONDS = 0.2


class PasstBackend:
    """A passt process serving one virtio-net interface over a socket pair."""

    #: Frames carry no virtio_net_hdr.
    vnet_hdr = False

    def __init__(self, binary: Optional[str] = None) -> None:
        binary = binary or shutil.which("passt")
        if binary is None:
            raise ConfigError("--net user needs passt: install it (apt-get install passt) or use --net tap")
        self._logdir = tempfile.TemporaryDirectory(prefix="xvm-passt-")
        self.log_path = Path(self._logdir.name) / "passt.log"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [binary, "--foreground", "--one-off", "--quiet", "--log-file", str(self.log_path),
                   "--fd", str(theirs.fileno())]
        try:
            self.process = subprocess.Popen(
                command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            ours.close()
            raise ConfigError(f"--net user: cannot run {binary} ({error.strerror}): reinstall passt") from error
        finally:
            theirs.close()
        self.sock = ours
        time.sleep(STARTUP_CHECK_SECONDS)
        if self.process.poll() is not None:
            log = self._log_tail()
            self.close()
            raise DeviceError(f"--net user: passt exited at start ({log or 'no log'}): check `passt --help`")

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def set_offloads(self, csum: bool, tso4: bool, tso6: bool) -> None:
        """Frames to and from passt are always complete: nothing to configure."""

    def send(self, parts: Sequence[bytes]) -> None:
        """Send one frame gathered from `parts`, length first."""
        length = sum(len(p) for p in parts)
        try:
            self.sock.sendall(_LENGTH.pack(length) + b"".join(parts))
        except OSError as error:
            raise DeviceError(f"--net user: passt is gone ({error.strerror}; {self._log_tail()})") from error

    def recv(self) -> Optional[bytes]:
        """The next frame from passt; None when interrupted or passt has exited."""
        header = self._recv_exactly(_LENGTH.size)
        if header is None:
            return None
        length = _LENGTH.unpack(header)[0]
        if length > MAX_FRAME:
            raise DeviceError(f"--net user: passt sent a {length}-byte frame; the stream is out of step")
        return self._recv_exactly(length)

    def _recv_exactly(self, count: int) -> Optional[bytes]:
        buffer = bytearray(count)
        view = memoryview(buffer)
        done = 0
        while done < count:
            try:
                got = self.sock.recv_into(view[done:])
            except InterruptedError:
                continue
            except OSError:
                return None
            if got == 0:
                return None
            done += got
        return bytes(buffer)

    def interrupt(self) -> None:
        """Make a blocked recv() return None (shuts the socket down; passt then exits)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop passt (it exits when its socket closes) and reap it."""
        self.interrupt()
        self.sock.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._logdir.cleanup()
