"""Guest-physical memory: regions backed by memfd + mmap, shared by both engines."""

from xvm.memory.guest_memory import GuestMemory, MemoryRegion, ram_layout

__all__ = ["GuestMemory", "MemoryRegion", "ram_layout"]
