"""PasstBackend: a real passt answers an ARP request sent over the QEMU stream protocol."""

from __future__ import annotations

import shutil
import socket
import struct
import threading

import pytest

from xvm.devices.backends.passt import PasstBackend
from xvm.errors import ConfigError

GUEST_MAC = bytes.fromhex("020000123456")


def default_gateway() -> str:
    """The IPv4 gateway of the host's default route (passt's default for the guest too)."""
    with open("/proc/net/route") as routes:
        for line in routes.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return ""


@pytest.fixture
def passt():
    if shutil.which("passt") is None:
        print("skipping: passt is not installed (apt-get install passt)")
        pytest.skip("passt is not installed (apt-get install passt)")
    backend = PasstBackend()
    yield backend
    backend.close()


def arp_request(target_ip: str) -> bytes:
    """Ethernet broadcast ARP who-has (RFC 826) from the guest."""
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1,
        GUEST_MAC, socket.inet_aton("0.0.0.0"), bytes(6), socket.inet_aton(target_ip),
    )
    return b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + arp


def test_passt_answers_arp_for_the_gateway(passt):
    gateway = default_gateway()
    if not gateway:
        print("skipping: the host has no IPv4 default route, so passt has no gateway to answer for")
        pytest.skip("no IPv4 default route")
    replies = []

    def reader():
        while True:
            frame = passt.recv()
            if frame is None:
                return
            if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02":
                replies.append(frame)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    for _ in range(20):
        passt.send([arp_request(gateway)])
        thread.join(0.25)
        if replies:
            break
    assert replies, "passt did not answer the ARP request"
    reply = replies[0]
    assert reply[:6] == GUEST_MAC
    assert socket.inet_ntoa(reply[28:32]) == gateway


def test_close_stops_passt(passt):
    process = passt.process
    passt.close()
    assert process.poll() is not None
    assert passt.recv() is None


def test_missing_passt_names_the_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="apt-get install passt"):
        PasstBackend()
