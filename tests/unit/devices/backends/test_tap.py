"""TapBackend in a network namespace made by the test: frames both ways, seen by a raw socket there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from xvm.devices.backends.tap import VNET_HDR_LEN, TapBackend
from xvm.errors import ConfigError

ETH_TYPE = "88b5"  # IEEE 802 local experimental ethertype: nothing else in the namespace sends it
TO_NS = bytes.fromhex("ffffffffffff 020000000001 " + ETH_TYPE) + b"to the namespace" + bytes(30)
FROM_NS = bytes.fromhex("020000000001 020000000002 " + ETH_TYPE) + b"from the namespace" + bytes(30)

# Runs inside the namespace: prints the first 88b5 frame seen on IFNAME, then sends one back.
PEER = textwrap.dedent("""
    import socket, sys
    ifname, reply = sys.argv[1], bytes.fromhex(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
    s.bind((ifname, 0))
    s.settimeout(10)
    print("ready", flush=True)
    frame = s.recv(65536)
    print(frame.hex(), flush=True)
    s.send(reply)
""")


def _netns_available() -> str:
    if os.geteuid() != 0:
        return "needs root to create a network namespace and a TAP device"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun on this host"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return ""


@pytest.fixture
def netns():
    reason = _netns_available()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    name = f"xvmtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_frames_cross_a_tap_moved_into_a_namespace(netns):
    ifname = f"xvmt{os.getpid() % 100000}"
    tap = TapBackend(ifname)
    try:
        assert tap.ifname == ifname
        subprocess.run(["ip", "link", "set", ifname, "netns", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", ifname, "up"], check=True)
        peer = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PEER, ifname, FROM_NS.hex()],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert peer.stdout.readline().strip() == "ready"
            tap.send([bytes(VNET_HDR_LEN), TO_NS])  # a plain frame: no offload flags
            assert bytes.fromhex(peer.stdout.readline().strip()) == TO_NS
            while True:  # skip IPv6 router solicitations and the like
                got = tap.recv()
                if got[VNET_HDR_LEN + 12:VNET_HDR_LEN + 14].hex() == ETH_TYPE:
                    break
            assert got[:10] == bytes(10)  # no offload: flags and gso_type zero
            assert got[VNET_HDR_LEN:] == FROM_NS
        finally:
            peer.wait(10)
    finally:
        tap.close()


def test_a_created_tap_gets_a_free_name_and_disappears_on_close():
    reason = _netns_available()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    tap = TapBackend()
    name = tap.ifname
    assert name.startswith("xvmtap")
    assert os.path.exists(f"/sys/class/net/{name}")
    tap.set_offloads(csum=True, tso4=True, tso6=True)
    tap.interrupt()
    assert tap.recv() is None
    tap.close()
    assert not os.path.exists(f"/sys/class/net/{name}")


def test_overlong_interface_names_are_refused():
    with pytest.raises(ConfigError, match="1 to 15 bytes"):
        TapBackend("x" * 16)
