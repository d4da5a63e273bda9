"""The kvm engine: hardware-assisted virtualization through Linux KVM.

abi.py (ctypes mirror of linux/kvm.h), ioctls.py (numbers by fd kind),
system.py (Kvm), vm.py (VmFd), vcpu.py (VcpuFd), engine.py (KvmEngine, the
engines.base contract), host.py (activation checks for `xvm doctor`).
"""
