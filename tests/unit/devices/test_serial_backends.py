from __future__ import annotations

import os

import pytest

from xvm.devices.backends.serial import BufferOutput, FdOutput, InputQueue
from xvm.errors import DeviceError


def test_fd_output_writes_everything():
    r, w = os.pipe()
    try:
        FdOutput(w).write(b"hello")
        assert os.read(r, 10) == b"hello"
    finally:
        os.close(r)
        os.close(w)


def test_fd_output_reports_broken_fd():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(DeviceError):
        FdOutput(w).write(b"x")


def test_buffer_output_tees():
    seen = []
    buf = BufferOutput(seen.append)
    buf.write(b"a")
    buf.write(b"bc")
    assert buf.getvalue() == b"abc"
    assert seen == [b"a", b"bc"]


def test_input_queue_retries_without_loss():
    got = bytearray()
    room = [3]

    def receive(data: bytes) -> int:
        n = min(room[0], len(data))
        got.extend(data[:n])
        room[0] -= n
        return n

    q = InputQueue(receive)
    q.push(b"hello")
    q.push(b"world")
    assert bytes(got) == b"hel" and len(q) == 7
    room[0] = 100
    assert q.pump()
    assert bytes(got) == b"helloworld" and len(q) == 0
