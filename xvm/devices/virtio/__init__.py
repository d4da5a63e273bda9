"""virtio 1.x: the split virtqueue (queue.py), the transport-independent device base
(device.py), the PCI and MMIO transports, and the devices (rng, console, block, net)."""
