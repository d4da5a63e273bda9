"""Host entropy for virtio-rng: the kernel's CSPRNG (getrandom / /dev/urandom via os.urandom).

os.urandom never blocks once the host kernel's pool is initialised (any
running host), so a guest request is served at once. A test passes its own
`Callable[[int], bytes]` instead.
"""

from __future__ import annotations

import os


class HostEntropy:
    """`read(n)` returns n bytes from the host CSPRNG."""

    def read(self, length: int) -> bytes:
        return os.urandom(length)
