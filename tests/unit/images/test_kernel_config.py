"""The kernel config fragment and the checks run on the final .config."""

from __future__ import annotations

import re

import pytest

from xvm.images.kernel import FRAGMENT, check_config, config_hash, parse_fragment, patches

LINE = re.compile(r"^(CONFIG_[A-Z0-9_]+=(y|n|\d+|\"[^\"]*\")|# CONFIG_[A-Z0-9_]+ is not set|#( .*)?|)$")


def test_every_fragment_line_is_an_option_or_comment():
    for number, line in enumerate(FRAGMENT.read_text().splitlines(), 1):
        assert LINE.match(line), f"kernel.config line {number}: {line!r}"


def test_fragment_has_what_the_guest_needs():
    options = parse_fragment(FRAGMENT.read_text())
    for name in (
        "CONFIG_64BIT",
        "CONFIG_PRINTK",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_BLK_DEV_INITRD",
        "CONFIG_BINFMT_ELF",
        "CONFIG_BINFMT_SCRIPT",
        "CONFIG_DEVTMPFS",
        "CONFIG_DEVPORT",
        "CONFIG_PROC_FS",
        "CONFIG_SYSFS",
        "CONFIG_SMP",
        "CONFIG_X86_MPPARSE",
        "CONFIG_PVH",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_UNIX98_PTYS",
    ):
        assert options[name] == "y", name
    assert options["CONFIG_MODULES"] == "n"
    assert options["CONFIG_LEGACY_PTYS"] == "n"
    assert options["CONFIG_SERIAL_8250_RUNTIME_UARTS"] == "1"


def test_no_option_is_set_twice():
    names = re.findall(r"CONFIG_[A-Z0-9_]+", FRAGMENT.read_text())
    assert len(names) == len(set(names))


def test_parse_fragment_rejects_typos():
    with pytest.raises(ValueError):
        parse_fragment("CONFIG_FOO y\n")
    with pytest.raises(ValueError):
        parse_fragment("# CONFIG_FOO is unset\n")


def test_check_config_names_dropped_and_unwanted_options():
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "4", "CONFIG_D": "y"}
    final = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=2\n# CONFIG_D is not set\n"
    dropped, unwanted = check_config(final, wanted)
    assert dropped == ["CONFIG_C=4", "CONFIG_D=y"]
    assert unwanted == ["CONFIG_B=y"]


def test_config_hash_follows_the_source_version():
    assert config_hash("6.1.192-2") != config_hash("6.1.193-1")
    assert config_hash("6.1.192-2") == config_hash("6.1.192-2")


def test_patches_explain_themselves_and_their_options_are_on():
    options = parse_fragment(FRAGMENT.read_text())
    for patch in patches():
        text = patch.read_text()
        header = text[: text.index("\n--- a/")]
        assert "Why:" in header and "What:" in header, patch.name
        for symbol in re.findall(r"^\+config (\w+)$", text, re.MULTILINE):
            assert options.get(f"CONFIG_{symbol}") == "y", f"{patch.name} adds {symbol}; kernel.config must enable it"
