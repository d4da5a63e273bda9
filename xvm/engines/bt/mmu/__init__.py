"""mmu package."""
