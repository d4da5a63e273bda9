"""Damaged kernel images end in a LoaderError (or ConfigError), never in a traceback.

Each example takes a valid synthetic image of one format, overwrites a few
bytes (mostly in the headers: setup header, ELF and program headers,
multiboot header, PVH note) and maybe truncates it, then runs the whole
load_guest() path on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xvm.config import BootConfig
from xvm.errors import ConfigError
from xvm.loaders import load_guest
from xvm.memory.guest_memory import GuestMemory

KINDS = ("aout", "bzimage", "multiboot_elf", "pvh")

offsets = st.one_of(
    st.integers(min_value=0, max_value=0x300),  # ELF/program headers, bzImage setup header, a.out header
    st.integers(min_value=0x1000, max_value=0x1040),  # multiboot header inside the first ELF segment
    st.integers(min_value=0x4000, max_value=0x4040),  # the PVH image's notes
    st.integers(min_value=0, max_value=0x5000),
)
mutations = st.lists(st.tuples(offsets, st.integers(min_value=0, max_value=255)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def fuzz_memory() -> Iterator[GuestMemory]:
    memory = GuestMemory.allocate(32 << 20)
    yield memory
    memory.close()


# The builder fixtures are pure functions and tmp_path is only rewritten, so sharing them across
# examples is safe.
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(KINDS),
    changes=mutations,
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=0x5000)),
)
def test_damaged_images_fail_cleanly(
    fuzz_memory, tmp_path, make_bzimage, make_multiboot_elf, make_aout_kludge, make_pvh_vmlinux, kind, changes, cut
):
    builders = {
        "aout": make_aout_kludge,
        "bzimage": make_bzimage,
        "multiboot_elf": make_multiboot_elf,
        "pvh": make_pvh_vmlinux,
    }
    data = bytearray(builders[kind]())
    for offset, value in changes:
        if offset < len(data):
            data[offset] = value
    if cut is not None:
        del data[cut:]
    path = tmp_path / kind
    path.write_bytes(bytes(data))
    with contextlib.suppress(ConfigError):  # LoaderError is a ConfigError
        load_guest(fuzz_memory, BootConfig(kernel=path, cmdline="console=ttyS0"), 2)
