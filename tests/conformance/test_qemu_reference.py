"""The test guests themselves, checked on the reference machine (QEMU TCG).

If a guest fails here the guest is wrong, not xvm: every guest must print
exactly its PASS lines and exit with its value under QEMU before it may judge
an xvm engine.
"""

from __future__ import annotations

import pytest
from guests.build import GUESTS

#: QEMU with -no-reboot exits 0 on a triple fault.
QEMU_TRIPLE_FAULT_STATUS = 0


@pytest.mark.parametrize("name", list(GUESTS))
def test_guest_under_qemu(name: str, guests, qemu) -> None:
    guest = GUESTS[name]
    result = qemu(guests[name], guest.cmdline, guest.cpus)
    problems = guest.problems(result.returncode, result.stdout, QEMU_TRIPLE_FAULT_STATUS)
    assert not problems, "\n".join(problems) + "\n" + result.describe()


def test_failures_are_visible(guests, qemu) -> None:
    """A guest whose check cannot hold must not pass: hello without its cmdline token fails."""
    result = qemu(guests["hello"], "no-token-here")
    assert "FAIL hello.cmdline got=00000000 want=00000001" in result.stdout, result.describe()
    assert result.returncode == (1 << 1) | 1, result.describe()


def test_every_guest_is_built_and_documented() -> None:
    """Each .asm is in GUESTS (so the suite runs it) and has a row in the README's table."""
    from guests.build import SOURCE_DIR

    sources = sorted(path.stem for path in SOURCE_DIR.glob("*.asm"))
    assert sources == sorted(GUESTS)
    readme = (SOURCE_DIR / "README.md").read_text()
    assert [name for name in GUESTS if f"| `{name}` |" not in readme] == []
