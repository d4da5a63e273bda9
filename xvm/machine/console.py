"""The serial console as the user sees it.

Output from the guest's UART goes to stdout (unbuffered, so a shell prompt
appears at once) and into a capture buffer (for `Machine.run_command`).
Input, when stdin is a terminal and the VM is interactive, is read in raw
mode by a thread and fed to the UART. Like QEMU and picocom, Ctrl-A is the
escape key: Ctrl-A x quits, Ctrl-A h prints help, Ctrl-A Ctrl-A sends a
literal Ctrl-A. The terminal's settings are restored on every exit path
(normal stop, exception, signal) by `close()`, which the machine always calls.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from typing import Callable, Optional

CTRL_A = 0x01
ESCAPE_HELP = (
    b"\r\n[xvm] Ctrl-A x  quit the VM\r\n"
    b"[xvm] Ctrl-A h  this help\r\n"
    b"[xvm] Ctrl-A Ctrl-A  send Ctrl-A to the guest\r\n"
)
#: How much guest output run_command keeps (the tail is what matters).
CAPTURE_LIMIT = 16 << 20


class Console:
    """Connects the guest UART to the host terminal.

    `echo` writes guest output to `out_fd`; `capture` keeps it in memory.
    """

    def __init__(self, echo: bool = True, capture: bool = False, out_fd: int = 1) -> None:
        self.echo = echo
        self.capture = capture
        self.out_fd = out_fd
        self._captured = bytearray()
        self._lock = threading.Lock()
        self._saved_tty = None
        self._input_thread: Optional[threading.Thread] = None
        self._closing = False
        self._wake_r, self._wake_w = -1, -1

    # --- output ------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Guest output (called from the UART in a vCPU thread)."""
        if self.capture:
            with self._lock:
                self._captured += data
                if len(self._captured) > CAPTURE_LIMIT:
                    del self._captured[: len(self._captured) - CAPTURE_LIMIT]
        if self.echo:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.out_fd, view)
                except BlockingIOError:
                    select.select([], [self.out_fd], [])
                    continue
                except OSError:
                    self.echo = False  # stdout went away (closed pipe): keep the VM running
                    return
                view = view[written:]

    def output(self) -> str:
        """Everything captured so far, decoded leniently."""
        with self._lock:
            return self._captured.decode("utf-8", "replace")

    # --- input -------------------------------------------------------------
    def start_input(self, deliver: Callable[[bytes], int], on_quit: Callable[[], None]) -> bool:
        """Read the terminal in raw mode and feed the guest; False when stdin is not a tty.

        `deliver(data)` returns how many bytes the UART accepted; the rest is
        retried so nothing typed is lost. `on_quit` runs on Ctrl-A x.
        """
        if not sys.stdin.isatty():
            return False
        import termios
        import tty

        fd = sys.stdin.fileno()
        self._saved_tty = termios.tcgetattr(fd)
        tty.setraw(fd)
        self._wake_r, self._wake_w = os.pipe()
        self._input_thread = threading.Thread(
            target=self._input_loop, args=(fd, deliver, on_quit), name="xvm-console", daemon=True
        )
        self._input_thread.start()
        return True

    def _input_loop(self, fd: int, deliver: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        escape = False
        pending = b""
        while not self._closing:
            timeout = 0.01 if pending else None
            ready, _, _ = select.select([fd, self._wake_r], [], [], timeout)
            if self._wake_r in ready:
                return
            if fd in ready:
                chunk = os.read(fd, 1024)
                if not chunk:
                    return
                for byte in chunk:
                    if escape:
                        escape = False
                        if byte in (ord("x"), ord("X")):
                            self.write(b"\r\n[xvm] quit\r\n")
                            on_quit()
                            return
                        if byte in (ord("h"), ord("H"), ord("?")):
                            self.write(ESCAPE_HELP)
                            continue
                        if byte != CTRL_A:
                            continue
                    elif byte == CTRL_A:
                        escape = True
                        continue
                    pending += bytes((byte,))
            if pending:
                pending = pending[deliver(pending):]

    def close(self) -> None:
        """Stop reading input and restore the terminal exactly as it was."""
        self._closing = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._input_thread is not None:
            self._input_thread.join(timeout=1)
            self._input_thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
