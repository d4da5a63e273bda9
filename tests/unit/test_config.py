"""MachineConfig validation and size parsing: every bad value names the fix."""

import pytest

from xvm.config import BootConfig, MachineConfig, parse_mem_size
from xvm.errors import ConfigError


@pytest.mark.parametrize("text,mib", [("256M", 256), ("2G", 2048), ("512", 512), ("1GiB", 1024), ("4096K", 4)])
def test_parse_mem_size(text, mib):
    assert parse_mem_size(text) == mib


@pytest.mark.parametrize("text", ["lots", "1.5G", "-1M", "1000K"])
def test_parse_mem_size_rejects(text):
    with pytest.raises(ConfigError, match="--mem"):
        parse_mem_size(text)


@pytest.mark.parametrize(
    "config,message",
    [
        (MachineConfig(mem_mib=1), "--mem 1M is out of range"),
        (MachineConfig(mem_mib=10**7), "out of range"),
        (MachineConfig(cpus=0), "--cpus 0 is out of range"),
        (MachineConfig(engine="vmware"), "--engine 'vmware' is unknown"),
        (MachineConfig(boot=BootConfig(kernel="/nonexistent/bzImage")), "no such file"),
        (MachineConfig(timeout=-1), "--timeout"),
    ],
)
def test_validate_names_the_problem(config, message):
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_defaults_are_valid():
    assert MachineConfig().validate().mem_bytes == 256 << 20
