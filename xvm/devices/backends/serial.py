"""Host ends of a serial port: where guest output goes, how host input waits.

A UART takes its output as a plain `Callable[[bytes], None]`, so a bound
method of any object here (or `sys.stdout.buffer.write`) will do. Input is
pushed by the console thread with `Uart8250.receive()`, which accepts only
what fits in the receive FIFO; `InputQueue` keeps the rest until the guest has
drained some, so a pasted line is never lost.

    sink = FdOutput(1)
    uart = Uart8250(irq, sink.write)
    pending = InputQueue(uart.receive)
    pending.push(os.read(0, 4096))   # console thread
    pending.pump()                   # again whenever the guest may have read
"""

from __future__ import annotations

import collections
import os
import select
import threading
from typing import Callable, Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

from xvm.errors import DeviceError


class SerialOutput(Protocol):
    """Receives every byte the guest transmits, in order."""

    def write(self, data: bytes) -> None: ...


class FdOutput:
    """Writes guest output to a file descriptor (stdout, a pty, a log file).

    os.write may write less than asked on pipes and ttys, so it loops; a
    closed or broken descriptor is a host problem, reported as DeviceError.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                # A non-blocking terminal is full: wait until it drains.
                select.select([], [self.fd], [])
                continue
            except OSError as e:
                raise DeviceError(f"serial output to fd {self.fd} failed: {e.strerror}; is the terminal gone?") from e
            view = view[written:]


class BufferOutput:
    """Collects guest output in memory (run_command, tests), optionally teeing it."""

    def __init__(self, tee: Optional[Callable[[bytes], None]] = None) -> None:
        self._chunks: list = []
        self._lock = threading.Lock()
        self._tee = tee

    def write(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(bytes(data))
        if self._tee is not None:
            self._tee(data)

    def getvalue(self) -> bytes:
        with self._lock:
            joined = b"".join(self._chunks)
            self._chunks = [joined]
            return joined


class InputQueue:
    """Host input not yet accepted by the UART, handed over as room appears."""

    def __init__(self, receive: Callable[[bytes], int]) -> None:
        self._receive = receive
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def push(self, data: bytes) -> None:
        """Queue `data` behind anything still waiting, then try to deliver."""
        with self._lock:
            if data:
                self._pending.append(bytes(data))
        self.pump()

    def pump(self) -> bool:
        """Deliver what the UART accepts; True when nothing is left waiting."""
        with self._lock:
            while self._pending:
                chunk = self._pending[0]
                taken = self._receive(chunk)
                if taken < len(chunk):
                    self._pending[0] = chunk[taken:]
                    return False
                self._pending.popleft()
            return True

    def __len__(self) -> int:
        with self._lock:
            return sum(len(chunk) for chunk in self._pending)
