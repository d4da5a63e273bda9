"""xvm: x86 virtualization in Python.

    from xvm import Machine, MachineConfig
    with Machine(MachineConfig(mem_mib=256)) as vm:
        result = vm.run_command(["uname", "-a"])
        print(result.output, result.status)
"""

from xvm.config import BootConfig, DiskConfig, MachineConfig, NetConfig

__all__ = ["BootConfig", "DiskConfig", "Machine", "MachineConfig", "NetConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Machine pulls in engines and devices; import it only when asked for.
    if name == "Machine":
        from xvm.machine.machine import Machine

        return Machine
    raise AttributeError(name)
