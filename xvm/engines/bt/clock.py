"""Guest time on the bt engine: counted in instructions, or read from the host.

Timed devices (PIT, RTC, LAPIC timer) read a Clock (`now_ns()`) and catch up
when the run loop calls `timers.tick(now)` (STYLE.md 12). On bt that clock
is, by default, *virtual*: time is the boot vCPU's retired-instruction count
times NS_PER_INSTRUCTION, plus the time skipped when a HLT waits for the
next timer (idle time costs nothing) and PAUSE_NS per PAUSE. The same guest
with the same inputs therefore sees the same interrupts at the same
instructions, and a run is reproducible down to the instruction trace.
`--clock host` uses the host's monotonic clock instead (time passes while
Python is slow, as a human at the console sees it).

    clock = BtClock()
    clock.attach(cpu)                 # the boot vCPU's CpuState
    clock.now_ns()                    # cpu.icount * NS_PER_INSTRUCTION + time skipped

Choice of NS_PER_INSTRUCTION. The guest perceives a CPU retiring
1e9 / NS_PER_INSTRUCTION instructions per second. A smaller value (a faster
virtual CPU) makes every guest timer tick cost more instructions: Linux's
HZ tick and its calibrated busy waits (`udelay`, `mdelay`, the PIT/TSC
calibration loops) scale with it, and a boot spends proportionally more host
time spinning. A larger value makes timer interrupts relatively more
frequent (the handler's few thousand instructions become a visible share of
the run at HZ=1000) and delays expire "early" in work done. One nanosecond
per instruction is a 1 GHz, IPC-1 machine: realistic for the code Linux
expects, a timer tick every 10^6 instructions at HZ=1000 (interrupt overhead
well under 1 %), while idle periods cost nothing because HLT skips straight
to the next deadline.
"""

from __future__ import annotations

import time
from typing import Optional

from xvm.engines.bt.state import CpuState

#: Virtual nanoseconds per retired guest instruction (see the module docstring).
NS_PER_INSTRUCTION = 1
#: Virtual nanoseconds a PAUSE costs. PAUSE is the spin-wait hint (SDM Vol. 2
#: PAUSE; Linux's cpu_relax() in every polling loop and udelay()): charging it
#: time, as hardware pause-loop exiting hands a spinning vCPU's time away,
#: lets busy-waits end in a few hundred iterations instead of one per
#: nanosecond. Hardware PAUSE takes 10 to 140 cycles; a spinning guest cannot
#: tell a slower PAUSE from a busier machine.
PAUSE_NS = 200
CLOCK_MODES = ("virtual", "host")
#: The TSC's rate: it counts retired instructions (and the time skipped), one tick per virtual nanosecond.
TSC_HZ = 1_000_000_000 // NS_PER_INSTRUCTION


class BtClock:
    """The Clock the devices of a bt VM must use (`now_ns()`), virtual or host time.

    Read from any thread (device backends, the console); advanced only by the
    boot vCPU's thread, through its instruction count and `skip_to`.
    """

    def __init__(self) -> None:
        self._cpu: Optional[CpuState] = None
        #: Virtual time skipped while halted (HLT with IF=1 jumps to the next deadline).
        self._idle_ns = 0
        self.virtual = True
        self._host_start = time.monotonic_ns()

    def attach(self, cpu: CpuState) -> None:
        """Derive virtual time from `cpu`'s instruction count (the boot vCPU)."""
        self._cpu = cpu

    def use_host_time(self, host: bool) -> None:
        """`--clock host`: read the host's monotonic clock instead of counting instructions."""
        self.virtual = not host
        self._host_start = time.monotonic_ns()

    def now_ns(self) -> int:
        if not self.virtual:
            return time.monotonic_ns() - self._host_start
        cpu = self._cpu
        return self._idle_ns + (cpu.icount * NS_PER_INSTRUCTION if cpu is not None else 0)

    def skip_to(self, when_ns: int) -> int:
        """Virtual time: jump forward to `when_ns` (an idle vCPU waiting for a timer); never backwards.

        Returns the nanoseconds skipped (0 with host time).
        """
        delta = when_ns - self.now_ns()
        if not self.virtual or delta <= 0:
            return 0
        self._idle_ns += delta
        return delta

    def instructions_until(self, when_ns: int) -> int:
        """How many instructions the boot vCPU retires before virtual time reaches `when_ns` (>= 0)."""
        delta = when_ns - self.now_ns()
        if delta <= 0:
            return 0
        return -(-delta // NS_PER_INSTRUCTION)
