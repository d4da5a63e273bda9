"""Guest faults as exceptions of their own kind.

An instruction that faults raises GuestFault mid-way; the run loop catches
it, restores RIP to the faulting instruction (faults) or leaves it after the
instruction (traps), and delivers the vector through the IVT/IDT. Nothing the
guest does raises anything else: a Python exception escaping the executor is
an xvm bug. Model: Blink `blink/throw.c`, v86 `src/rust/paging.rs`.
"""

from __future__ import annotations

from typing import Optional

# Exception vectors (SDM Vol. 3 Table 6-1).
DE, DB, NMI, BP, OF, BR, UD, NM, DF = 0, 1, 2, 3, 4, 5, 6, 7, 8
TS, NP, SS_FAULT, GP, PF = 10, 11, 12, 13, 14
MF, AC, MC, XM = 16, 17, 18, 19

#: Vectors whose delivery pushes an error code in protected/long mode.
VECTORS_WITH_ERROR_CODE = frozenset((DF, TS, NP, SS_FAULT, GP, PF, AC))
#: Contributory exceptions for the double-fault rules (SDM Vol. 3 Table 6-5).
CONTRIBUTORY = frozenset((DE, TS, NP, SS_FAULT, GP))

# Page-fault error code bits (SDM Vol. 3 4.7).
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_RSVD = 1 << 3
PF_FETCH = 1 << 4


class GuestFault(Exception):
    """An architectural exception raised by the guest's current instruction.

    `error_code` is None for vectors that push none; `cr2` is set for #PF.
    """

    def __init__(self, vector: int, error_code: Optional[int] = None, cr2: Optional[int] = None) -> None:
        super().__init__(vector, error_code, cr2)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2

    def __repr__(self) -> str:
        code = "" if self.error_code is None else f" code={self.error_code:#x}"
        addr = "" if self.cr2 is None else f" cr2={self.cr2:#x}"
        return f"GuestFault(vector={self.vector}{code}{addr})"


class TripleFault(Exception):
    """A fault while delivering #DF: the CPU shuts down (the VM stops with a register dump)."""


def divide_error() -> GuestFault:
    return GuestFault(DE)


def invalid_opcode() -> GuestFault:
    return GuestFault(UD)


def device_not_available() -> GuestFault:
    return GuestFault(NM)


def general_protection(code: int = 0) -> GuestFault:
    return GuestFault(GP, code & 0xFFFF)


def stack_fault(code: int = 0) -> GuestFault:
    return GuestFault(SS_FAULT, code & 0xFFFF)


def segment_not_present(code: int) -> GuestFault:
    return GuestFault(NP, code & 0xFFFF)


def invalid_tss(code: int) -> GuestFault:
    return GuestFault(TS, code & 0xFFFF)


def page_fault(linear: int, code: int) -> GuestFault:
    return GuestFault(PF, code, linear)
