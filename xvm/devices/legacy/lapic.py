"""Local APIC in xAPIC mode: the 4 KiB register page at 0xFEE00000 (SDM vol. 3A ch. 11).

One instance per vCPU. It holds the 256-bit IRR/ISR/TMR, the task and
processor priorities that decide what may interrupt the CPU, the local
vector table (timer, LINT0/1, error, thermal, performance) and the ICR from
which the CPU sends inter-processor interrupts. It never reaches another
APIC itself: IPIs leave through the injected `send_ipi` callable, EOIs of
level-triggered vectors through `on_eoi` (the IOAPIC clears its remote IRR
there), and the owner (xvm.devices.legacy.interrupts) delivers incoming
messages with `accept()`.

The timer counts a 1 GHz bus clock (the rate KVM and QEMU give their APIC
timers) divided by the divide configuration register; it is lazy like the
other timed devices: `tick(now_ns)` fires the expirations since the last
call (periodic expirations that were missed coalesce into one interrupt),
`next_deadline()` says when the next is due. TSC-deadline mode is not
implemented, so CPUID must not advertise it.

CPU-side protocol (the bt engine, through the router): `has_interrupt()`
is true when the highest requested vector outranks the processor priority
(SDM 11.8.3.1); `acknowledge()` moves it from IRR to ISR and returns it (the
INTA cycle). NMI, INIT and SIPI are latched for the engine: `take_nmi()`,
`take_init()`, `take_sipi()`.

    apic = Lapic(0, clock, send_ipi=router.route_ipi, on_eoi=ioapic.eoi, bsp=True)
    apic.accept(ApicMessage(vector=0x31))
    if apic.has_interrupt():
        vector = apic.acknowledge()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from xvm.arch.x86.layout import LAPIC_START
from xvm.devices.clock import Clock

LAPIC_MMIO_SIZE = 0x1000

# Register offsets (SDM table 11-1; Linux arch/x86/include/asm/apicdef.h).
APIC_ID = 0x020
APIC_LVR = 0x030  # version
APIC_TASKPRI = 0x080  # TPR
APIC_ARBPRI = 0x090  # APR
APIC_PROCPRI = 0x0A0  # PPR
APIC_EOI = 0x0B0
APIC_RRR = 0x0C0  # remote read
APIC_LDR = 0x0D0  # logical destination
APIC_DFR = 0x0E0  # destination format
APIC_SPIV = 0x0F0  # spurious interrupt vector
APIC_ISR = 0x100  # 8 registers, 0x100-0x170
APIC_TMR = 0x180  # 8 registers, 0x180-0x1F0
APIC_IRR = 0x200  # 8 registers, 0x200-0x270
APIC_ESR = 0x280  # error status
APIC_LVTCMCI = 0x2F0
APIC_ICR = 0x300  # interrupt command, low half
APIC_ICR2 = 0x310  # interrupt command, destination in bits 31:24
APIC_LVTT = 0x320  # timer
APIC_LVTTHMR = 0x330  # thermal sensor
APIC_LVTPC = 0x340  # performance counters
APIC_LVT0 = 0x350  # LINT0
APIC_LVT1 = 0x360  # LINT1
APIC_LVTERR = 0x370  # error
APIC_TMICT = 0x380  # timer initial count
APIC_TMCCT = 0x390  # timer current count
APIC_TDCR = 0x3E0  # timer divide configuration

#: Version 0x14 (integrated APIC) with six LVT entries (max LVT index 5), as KVM reports.
APIC_VERSION = 0x14 | (5 << 16)

# IA32_APIC_BASE MSR (0x1B) bits (SDM 11.4.4).
MSR_APIC_BASE_BSP = 0x100  # this is the bootstrap processor
MSR_APIC_BASE_ENABLE = 0x800  # APIC global (hardware) enable

APIC_SPIV_APIC_ENABLED = 0x100  # software enable
APIC_SPIV_WRITABLE = 0x13FF  # vector, enable, focus check, EOI-broadcast suppression
APIC_LVT_MASKED = 0x10000
APIC_LVT_TIMER_PERIODIC = 0x20000
APIC_LVT_LEVEL_TRIGGER = 0x8000
APIC_LVT_REMOTE_IRR = 0x4000
APIC_DFR_FLAT = 0xF0000000  # model bits 31:28 = 1111: flat; 0000: cluster

# Delivery modes (ICR/LVT/redirection entry bits 10:8).
APIC_DM_FIXED = 0
APIC_DM_LOWEST = 1
APIC_DM_SMI = 2
APIC_DM_NMI = 4
APIC_DM_INIT = 5
APIC_DM_STARTUP = 6
APIC_DM_EXTINT = 7

# ICR bits.
APIC_ICR_DEST_LOGICAL = 0x800
APIC_ICR_BUSY = 0x1000  # delivery status: never set, delivery is instant
APIC_ICR_LEVEL_ASSERT = 0x4000
APIC_ICR_TRIGGER_LEVEL = 0x8000
APIC_ICR_SHORTHAND_SHIFT = 18
APIC_ICR_WRITABLE = 0xCCFFF  # vector, mode, dest mode, level, trigger, shorthand

# Destination shorthands (ICR bits 19:18).
APIC_DEST_NONE = 0
APIC_DEST_SELF = 1
APIC_DEST_ALLINC = 2
APIC_DEST_ALLBUT = 3
APIC_BROADCAST = 0xFF  # physical or logical destination that matches every APIC

# Error status bits (SDM 11.5.3).
APIC_ESR_SEND_ILLEGAL_VECTOR = 0x20
APIC_ESR_RECV_ILLEGAL_VECTOR = 0x40
APIC_ESR_ILLEGAL_REGISTER = 0x80

#: Writable bits of each LVT entry (the rest are reserved or read-only).
_LVT_WRITABLE = {
    APIC_LVTT: APIC_LVT_MASKED | APIC_LVT_TIMER_PERIODIC | 0xFF,
    APIC_LVTTHMR: APIC_LVT_MASKED | 0x7FF,
    APIC_LVTPC: APIC_LVT_MASKED | 0x7FF,
    APIC_LVT0: APIC_LVT_MASKED | APIC_LVT_LEVEL_TRIGGER | 0x2000 | 0x7FF,
    APIC_LVT1: APIC_LVT_MASKED | APIC_LVT_LEVEL_TRIGGER | 0x2000 | 0x7FF,
    APIC_LVTERR: APIC_LVT_MASKED | 0xFF,
    APIC_LVTCMCI: APIC_LVT_MASKED | 0x7FF,
}

#: The timer's input clock: one bus cycle per nanosecond.
APIC_BUS_CYCLE_NS = 1


@dataclass(frozen=True)
class ApicMessage:
    """An interrupt message on the APIC bus: from an IOAPIC pin, an MSI or an ICR write."""

    vector: int
    delivery_mode: int = APIC_DM_FIXED
    logical: bool = False  # destination mode: logical (LDR match) or physical (APIC ID)
    destination: int = 0
    level_triggered: bool = False
    shorthand: int = APIC_DEST_NONE


def _highest(bits: int) -> int:
    """Highest set bit number of a 256-bit vector bitmap, or -1."""
    return bits.bit_length() - 1


class Lapic:
    """One CPU's local APIC; `apic_id` is its physical APIC ID."""

    def __init__(
        self,
        apic_id: int,
        clock: Clock,
        send_ipi: Callable[[int, ApicMessage], None],
        on_eoi: Callable[[int], None],
        bsp: bool = False,
        on_interrupt: Optional[Callable[[], None]] = None,
    ) -> None:
        self.apic_id = apic_id & 0xFF
        self.bsp = bsp
        self._clock = clock
        self._send_ipi = send_ipi
        self._on_eoi = on_eoi
        self._on_interrupt = on_interrupt
        #: IA32_APIC_BASE.EN: when clear the APIC is off and LINT0 acts as a plain INTR pin.
        self.hw_enabled = True
        self.reset()

    def reset(self) -> None:
        """Power-on / INIT state (SDM 11.4.7.3); the APIC ID survives."""
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.tpr = 0
        self._ldr = 0
        self._dfr = 0xFFFFFFFF
        self._svr = 0xFF
        self._esr = 0  # what ESR reads: latched at the last ESR write
        self._esr_pending = 0
        self._icr = 0
        self._icr2 = 0
        self._lvt = {reg: APIC_LVT_MASKED for reg in _LVT_WRITABLE}
        if self.bsp:
            # Virtual-wire mode: the PIC's INTR reaches the BSP through LINT0, as
            # firmware leaves it and as KVM's kvm_lapic_reset() sets it.
            self._lvt[APIC_LVT0] = APIC_DM_EXTINT << 8
        self._tdcr = 0
        self._tmict = 0
        self._timer_start_ns = 0
        self._timer_last_ns = 0  # expirations up to here have been delivered
        self.nmi_pending = False
        self.init_pending = False
        self.sipi_vector: Optional[int] = None
        self.extint_pending = False

    # --- state queries ----------------------------------------------------------
    @property
    def apic_base(self) -> int:
        """IA32_APIC_BASE as RDMSR sees it; the page cannot be relocated."""
        value = LAPIC_START
        if self.bsp:
            value |= MSR_APIC_BASE_BSP
        if self.hw_enabled:
            value |= MSR_APIC_BASE_ENABLE
        return value

    def write_apic_base(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE: only the global enable bit is honoured."""
        enable = bool(value & MSR_APIC_BASE_ENABLE)
        if self.hw_enabled and not enable:
            self.reset()  # disabling the APIC resets it (SDM 11.4.3)
        self.hw_enabled = enable

    @property
    def software_enabled(self) -> bool:
        return bool(self._svr & APIC_SPIV_APIC_ENABLED)

    @property
    def lvt0(self) -> int:
        return self._lvt[APIC_LVT0]

    def accepts_pic_interrupt(self) -> bool:
        """Whether LINT0 passes the 8259's INTR through (unmasked ExtINT)."""
        lvt0 = self._lvt[APIC_LVT0]
        return not lvt0 & APIC_LVT_MASKED and (lvt0 >> 8) & 7 == APIC_DM_EXTINT

    def ppr(self) -> int:
        """Processor priority (SDM 11.8.3.1): the TPR or the class in service, whichever is higher."""
        isrv = max(_highest(self.isr), 0)
        if (self.tpr & 0xF0) >= (isrv & 0xF0):
            return self.tpr & 0xFF
        return isrv & 0xF0

    def matches(self, destination: int, logical: bool) -> bool:
        """Whether a message for `destination` in the given mode is for this APIC (SDM 11.6.2)."""
        destination &= 0xFF
        if destination == APIC_BROADCAST:
            return True
        if not logical:
            return destination == self.apic_id
        ldr = self._ldr >> 24
        if self._dfr & APIC_DFR_FLAT == APIC_DFR_FLAT:
            return bool(ldr & destination)
        # Cluster model: high nibble selects the cluster, low nibble the members.
        return (destination >> 4) == (ldr >> 4) and bool(destination & ldr & 0xF)

    # --- interrupt acceptance and the CPU side -----------------------------------------
    def accept(self, message: ApicMessage) -> None:
        """Take a message from the APIC bus (IOAPIC, MSI, another APIC's IPI)."""
        if not self.hw_enabled:
            return  # a globally disabled APIC is off the bus (SDM 11.4.3)
        mode = message.delivery_mode
        if mode in (APIC_DM_FIXED, APIC_DM_LOWEST):
            self._request(message.vector & 0xFF, message.level_triggered)
        elif mode == APIC_DM_NMI:
            self.nmi_pending = True
            self._wake()
        elif mode == APIC_DM_INIT:
            self.init_pending = True
            self._wake()
        elif mode == APIC_DM_STARTUP:
            self.sipi_vector = message.vector & 0xFF
            self._wake()
        elif mode == APIC_DM_EXTINT:
            self.extint_pending = True
            self._wake()
        # SMI has no handler in xvm (no SMM): dropped.

    def _request(self, vector: int, level: bool) -> None:
        if not self.software_enabled:
            return  # a software-disabled APIC ignores fixed interrupts (SDM 11.4.7.2)
        if vector < 16:
            self._error(APIC_ESR_RECV_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self.irr |= bit
        if level:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._wake()

    def _error(self, bits: int) -> None:
        self._esr_pending |= bits
        lvt = self._lvt[APIC_LVTERR]
        if not lvt & APIC_LVT_MASKED and (lvt & 0xFF) >= 16:
            self._request(lvt & 0xFF, False)

    def _wake(self) -> None:
        if self._on_interrupt is not None:
            self._on_interrupt()

    def has_interrupt(self) -> bool:
        """A requested vector outranks the processor priority."""
        vector = _highest(self.irr)
        return vector >= 0 and (vector & 0xF0) > (self.ppr() & 0xF0)

    def acknowledge(self) -> int:
        """INTA: IRR -> ISR for the highest deliverable vector; the spurious vector if none."""
        if not self.has_interrupt():
            return self._svr & 0xFF
        vector = _highest(self.irr)
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        return vector

    def take_nmi(self) -> bool:
        pending, self.nmi_pending = self.nmi_pending, False
        return pending

    def take_init(self) -> bool:
        pending, self.init_pending = self.init_pending, False
        return pending

    def take_sipi(self) -> Optional[int]:
        vector, self.sipi_vector = self.sipi_vector, None
        return vector

    def _eoi(self) -> None:
        vector = _highest(self.isr)
        if vector < 0:
            return
        bit = 1 << vector
        self.isr &= ~bit
        if self.tmr & bit:
            self._on_eoi(vector)  # level-triggered: tell the IOAPIC (EOI broadcast)

    # --- timer ---------------------------------------------------------------------------
    def _divisor(self) -> int:
        """Timer divide value from TDCR bits 3,1:0 (SDM figure 11-10): 2..128, or 1."""
        code = ((self._tdcr & 0x8) >> 1) | (self._tdcr & 0x3)
        return 1 if code == 7 else 2 << code

    def _period_ns(self) -> int:
        return self._tmict * self._divisor() * APIC_BUS_CYCLE_NS

    def _periodic(self) -> bool:
        return bool(self._lvt[APIC_LVTT] & APIC_LVT_TIMER_PERIODIC)

    def _current_count(self, now: int) -> int:
        if not self._tmict:
            return 0
        elapsed = (now - self._timer_start_ns) // (self._divisor() * APIC_BUS_CYCLE_NS)
        if self._periodic():
            return self._tmict - elapsed % self._tmict
        return max(self._tmict - elapsed, 0)

    def tick(self, now_ns: int) -> None:
        """Deliver the timer expirations that happened by `now_ns`."""
        period = self._period_ns()
        if not period or now_ns <= self._timer_last_ns:
            return
        start = self._timer_start_ns
        fired = (now_ns - start) // period - (self._timer_last_ns - start) // period
        if not self._periodic():
            fired = 1 if self._timer_last_ns - start < period <= now_ns - start else 0
        self._timer_last_ns = now_ns
        if fired <= 0:
            return
        lvt = self._lvt[APIC_LVTT]
        if not lvt & APIC_LVT_MASKED:
            self._request(lvt & 0xFF, False)

    def next_deadline(self) -> Optional[int]:
        """Clock time of the next timer expiry that would interrupt, or None."""
        period = self._period_ns()
        if not period or self._lvt[APIC_LVTT] & APIC_LVT_MASKED:
            return None
        start = self._timer_start_ns
        elapsed = self._timer_last_ns - start
        if not self._periodic():
            return start + period if elapsed < period else None
        return start + (elapsed // period + 1) * period

    # --- MMIO ------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset & 0xC:
            return 0  # bytes 4-15 of each 16-byte slot are reserved
        value = self._read_register(offset & ~0xF)
        return (value >> ((offset & 0x3) * 8)) & ((1 << (8 * size)) - 1)

    def _read_register(self, reg: int) -> int:
        if reg == APIC_ID:
            return self.apic_id << 24
        if reg == APIC_LVR:
            return APIC_VERSION
        if reg == APIC_TASKPRI:
            return self.tpr
        if reg in (APIC_ARBPRI, APIC_RRR):
            return 0
        if reg == APIC_PROCPRI:
            return self.ppr()
        if reg == APIC_EOI:
            return 0  # write-only
        if reg == APIC_LDR:
            return self._ldr
        if reg == APIC_DFR:
            return self._dfr
        if reg == APIC_SPIV:
            return self._svr
        if APIC_ISR <= reg < APIC_ESR:
            base, bitmap = ((APIC_ISR, self.isr), (APIC_TMR, self.tmr), (APIC_IRR, self.irr))[(reg - APIC_ISR) >> 7]
            return (bitmap >> (((reg - base) >> 4) * 32)) & 0xFFFFFFFF
        if reg == APIC_ESR:
            return self._esr
        if reg == APIC_ICR:
            return self._icr
        if reg == APIC_ICR2:
            return self._icr2
        if reg in self._lvt:
            return self._lvt[reg]
        if reg == APIC_TMICT:
            return self._tmict
        if reg == APIC_TMCCT:
            return self._current_count(self._clock.now_ns())
        if reg == APIC_TDCR:
            return self._tdcr
        self._error(APIC_ESR_ILLEGAL_REGISTER)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset & 0xF:
            return  # xAPIC registers take aligned 32-bit stores only (SDM 11.4.1)
        value &= 0xFFFFFFFF
        reg = offset
        if reg == APIC_ID:
            self.apic_id = value >> 24
        elif reg == APIC_TASKPRI:
            self.tpr = value & 0xFF
        elif reg == APIC_EOI:
            self._eoi()
        elif reg == APIC_LDR:
            self._ldr = value & 0xFF000000
        elif reg == APIC_DFR:
            self._dfr = value | 0x0FFFFFFF
        elif reg == APIC_SPIV:
            self._svr = value & APIC_SPIV_WRITABLE
            if not self.software_enabled:
                for lvt in self._lvt:
                    self._lvt[lvt] |= APIC_LVT_MASKED
        elif reg == APIC_ESR:
            self._esr, self._esr_pending = self._esr_pending, 0
        elif reg == APIC_ICR:
            self._icr = value & APIC_ICR_WRITABLE
            self._send_icr()
        elif reg == APIC_ICR2:
            self._icr2 = value & 0xFF000000
        elif reg in self._lvt:
            self._write_lvt(reg, value)
        elif reg == APIC_TMICT:
            now = self._clock.now_ns()
            self._tmict = value
            self._timer_start_ns = now
            self._timer_last_ns = now
        elif reg == APIC_TDCR:
            now = self._clock.now_ns()
            current = self._current_count(now)
            self._tdcr = value & 0xB
            if self._tmict:
                # Keep the current count; the new divisor applies from now on.
                done = self._tmict - current
                self._timer_start_ns = now - done * self._divisor() * APIC_BUS_CYCLE_NS
                self._timer_last_ns = now
        elif reg not in (APIC_LVR, APIC_ARBPRI, APIC_PROCPRI, APIC_RRR, APIC_TMCCT) and not (
            APIC_ISR <= reg < APIC_ESR
        ):
            self._error(APIC_ESR_ILLEGAL_REGISTER)

    def _write_lvt(self, reg: int, value: int) -> None:
        value &= _LVT_WRITABLE[reg]
        if not self.software_enabled:
            value |= APIC_LVT_MASKED  # masks stay set while the APIC is disabled (SDM 11.4.7.2)
        self._lvt[reg] = value | (self._lvt[reg] & APIC_LVT_REMOTE_IRR)

    def _send_icr(self) -> None:
        icr = self._icr
        mode = (icr >> 8) & 7
        vector = icr & 0xFF
        if mode == APIC_DM_INIT and not icr & APIC_ICR_LEVEL_ASSERT and icr & APIC_ICR_TRIGGER_LEVEL:
            return  # INIT level de-assert: only synchronizes arbitration IDs on old CPUs
        if mode in (APIC_DM_FIXED, APIC_DM_LOWEST) and vector < 16:
            self._error(APIC_ESR_SEND_ILLEGAL_VECTOR)
            return
        self._send_ipi(
            self.apic_id,
            ApicMessage(
                vector=vector,
                delivery_mode=mode,
                logical=bool(icr & APIC_ICR_DEST_LOGICAL),
                destination=self._icr2 >> 24,
                level_triggered=bool(icr & APIC_ICR_TRIGGER_LEVEL),
                shorthand=(icr >> APIC_ICR_SHORTHAND_SHIFT) & 3,
            ),
        )
