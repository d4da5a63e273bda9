"""One exception family per layer, all rooted at XvmError.

The CLI turns any XvmError into a one-line message and an exit code; anything
else is a bug in xvm and is shown with a traceback only under --debug.
Messages should name the problem *and* the fix.
"""

from __future__ import annotations


class XvmError(Exception):
    """Root of every error xvm reports to a user."""

    exit_code = 1


class ConfigError(XvmError):
    """The user asked for something invalid (bad flag, missing file, size out of range)."""

    exit_code = 2


class LoaderError(ConfigError):
    """A kernel, initrd or firmware image cannot be loaded as asked."""


class KvmError(XvmError):
    """/dev/kvm is missing, not permitted, or an ioctl failed."""

    exit_code = 3


class DeviceError(XvmError):
    """A device model or its host backend failed (not a guest mistake)."""

    exit_code = 3


class SnapshotError(XvmError):
    """A snapshot file is unreadable, corrupt or from an incompatible version."""

    exit_code = 3


class ImageError(XvmError):
    """The default guest could not be fetched or built."""

    exit_code = 3


class GuestError(XvmError):
    """The guest did something that stopped the VM (triple fault, failed entry).

    `dump` carries the register dump printed for the user.
    """

    exit_code = 4

    def __init__(self, message: str, dump: str = "") -> None:
        super().__init__(message)
        self.dump = dump


class GuestMemoryError(XvmError):
    """A guest-physical access fell outside guest RAM.

    Raised to the caller (a device, a loader, an engine) which decides what the
    guest sees: a dropped write, all-ones read, a fault, a broken device.
    """
