"""Round-robin turns for the vCPU threads of one bt VM.

The GIL lets one Python thread run at a time anyway, but it does not share
fairly: under PyPy a vCPU spinning in translated code (waiting for a lock,
for a flag, for jiffies to move) kept the GIL for seconds while the vCPU
that would end the wait, and that drives virtual time, ran 25,000
instructions a second. Linux's SMP bring-up then crawled. QEMU's TCG solved
the same problem before MTTCG with one thread that runs the vCPUs in turn;
here each vCPU keeps its thread and takes turns: one vCPU runs guest code at
a time, hands over in arrival order once it has run a slice and another is
waiting, and gives its turn away whenever it leaves run() or sleeps (HLT,
wait-for-SIPI).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Optional

#: Guest instructions a vCPU runs before handing over to a waiting one.
SLICE_INSTRUCTIONS = 4096


class Turns:
    """Whose turn it is to run guest code, with FIFO hand-over."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: Optional[int] = None
        self._waiting: deque = deque()

    def take(self, index: int) -> None:
        """Block until vCPU `index` may run guest code (after every vCPU that asked before it)."""
        with self._cond:
            self._waiting.append(index)
            while self._holder is not None or self._waiting[0] != index:
                self._cond.wait()
            self._waiting.popleft()
            self._holder = index

    def give(self, index: int) -> None:
        """vCPU `index` stops running guest code for now."""
        with self._cond:
            if self._holder == index:
                self._holder = None
            self._cond.notify_all()

    def others_waiting(self) -> bool:
        """Whether a vCPU waits for a turn (read without the lock: a hint, checked again by take())."""
        return bool(self._waiting)

    def hand_over(self, index: int) -> None:
        """Let every vCPU waiting now run its slice, then continue."""
        self.give(index)
        self.take(index)
