"""PCI bus 0: configuration mechanism #1 and the host bridge (host_bridge.py), a function's
configuration space with BARs and capabilities (config_space.py), and MSI-X (msix.py)."""
