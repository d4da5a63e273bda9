"""Execution engines: kvm (hardware-assisted) and bt (binary translation)."""
