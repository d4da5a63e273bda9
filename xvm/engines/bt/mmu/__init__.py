"""Soft MMU of the bt engine: TLB of shadow translations (softmmu.py) over the page walker (walker.py)."""

from xvm.engines.bt.mmu.softmmu import Mmu, PhysicalIo
from xvm.engines.bt.mmu.walker import ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, MAXPHYADDR

__all__ = ["ACCESS_EXEC", "ACCESS_READ", "ACCESS_WRITE", "MAXPHYADDR", "Mmu", "PhysicalIo"]
