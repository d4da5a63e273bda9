"""pci package."""
