"""The builder appends an engine's Linux command-line hints, unless the user gave the same parameter."""

from __future__ import annotations

from xvm.config import BootConfig, MachineConfig
from xvm.machine.builder import _with_engine_hints


class HintingVm:
    def linux_cmdline_hints(self) -> str:
        return "lpj=10000000 noxsave"


def _linux_kernel(tmp_path):
    kernel = tmp_path / "bzImage"
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"  # the x86 boot protocol's header magic
    kernel.write_bytes(bytes(image))
    return kernel


def test_hints_are_appended_to_a_linux_command_line(tmp_path):
    config = MachineConfig(boot=BootConfig(kernel=_linux_kernel(tmp_path), cmdline="console=ttyS0"))
    assert _with_engine_hints(config, HintingVm()).boot.cmdline == "console=ttyS0 lpj=10000000 noxsave"


def test_a_parameter_the_user_gave_keeps_the_users_value(tmp_path):
    config = MachineConfig(boot=BootConfig(kernel=_linux_kernel(tmp_path), cmdline="console=ttyS0 lpj=4000000"))
    assert _with_engine_hints(config, HintingVm()).boot.cmdline == "console=ttyS0 lpj=4000000 noxsave"
