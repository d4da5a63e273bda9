"""Split virtqueue against a fake driver: chains, indirect tables, event index, wraparound, malformed input."""

from __future__ import annotations

import struct

import pytest

from xvm.devices.virtio.queue import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    Virtqueue,
    VirtqueueError,
)


def test_simple_chain_read_write_push(driver, queue):
    head = driver.post([b"hello ", b"world"], [4, 8])
    chain = queue.pop()
    assert chain.head == head
    assert chain.read_all() == b"hello world"
    assert chain.read(3, 5) == b"lo wo"
    assert (chain.readable_len, chain.writable_len) == (11, 12)
    assert chain.write(b"0123456789") == 10
    queue.push(chain.head, 10)
    assert driver.used() == [(head, 10)]
    assert driver.written(head) == b"0123456789\xee\xee"
    assert queue.pop() is None


def test_write_at_offset_and_truncation(driver, queue):
    head = driver.post([], [3, 3])
    chain = queue.pop()
    assert chain.write(b"abcdef", offset=2) == 4
    assert driver.written(head) == b"\xee\xeeabcd"


def test_indirect_chain(driver, queue):
    head = driver.post([b"req"], [5], indirect=True)
    chain = queue.pop()
    assert chain.head == head
    assert chain.read_all() == b"req"
    assert chain.writable_len == 5


def test_indirect_refused_without_feature(memory, queue, make_driver):
    drv = make_driver(memory, queue)
    drv.enable(indirect=False)
    drv.post([b"x"], indirect=True)
    with pytest.raises(VirtqueueError, match="INDIRECT_DESC"):
        queue.pop()


def test_many_chains_in_order(driver, queue):
    heads = [driver.post([bytes([i])]) for i in range(5)]
    got = []
    while (chain := queue.pop()) is not None:
        got.append((chain.head, chain.read_all()))
        queue.push(chain.head, 0)
    assert got == [(h, bytes([i])) for i, h in enumerate(heads)]
    assert [h for h, _ in driver.used()] == heads


def test_wraparound_of_16_bit_indices(memory, queue, make_driver):
    drv = make_driver(memory, queue, size=4)
    drv.enable()
    # Start both sides just below 2^16 (as after 65535 requests).
    queue.last_avail_idx = queue.next_used_idx = 0xFFFE
    drv.avail_idx = drv.last_used = 0xFFFE
    memory.write_u16(drv.used_ring + 2, 0xFFFE)
    for i in range(6):
        head = drv.post([bytes([i])])
        chain = queue.pop()
        assert chain.read_all() == bytes([i])
        queue.push(chain.head, 1)
        assert drv.used() == [(head, 1)]
    assert queue.last_avail_idx == 4 and memory.read_u16(drv.used_ring + 2) == 4


def test_no_interrupt_flag_without_event_idx(driver, queue):
    driver.post([b"a"])
    queue.push(queue.pop().head, 0)
    assert queue.needs_interrupt()
    driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    assert not queue.needs_interrupt()


def test_event_idx_interrupt_suppression(memory, queue, make_driver):
    drv = make_driver(memory, queue)
    drv.enable(event_idx=True)
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)  # ignored under EVENT_IDX
    for _ in range(3):
        drv.post([b"a"])
    queue.push(queue.pop().head, 0)
    assert queue.needs_interrupt()  # the first push always interrupts
    assert drv.avail_event() == 1  # device asks to be kicked for entry 1 on
    drv.set_used_event(2)  # driver: interrupt me when used.idx passes 2
    queue.push(queue.pop().head, 0)  # used.idx 2: has not passed used_event 2
    assert not queue.needs_interrupt()
    queue.push(queue.pop().head, 0)  # used.idx 3
    assert queue.needs_interrupt()
    assert not queue.needs_interrupt()  # nothing new since


def test_notification_suppression(driver, queue, memory):
    queue.disable_notifications()
    assert memory.read_u16(driver.used_ring) == VIRTQ_USED_F_NO_NOTIFY
    assert not queue.enable_notifications()
    assert memory.read_u16(driver.used_ring) == 0
    driver.post([b"a"])
    assert queue.enable_notifications()


def test_dma_write_notifier(driver, queue):
    seen = []
    queue.on_write = lambda gpa, n: seen.append(n)
    driver.post([], [2, 2])
    queue.pop().write(b"abc")
    assert seen == [2, 1]


# --- setup validation ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 3, 12, 512])
def test_bad_queue_size(memory, queue, make_driver, size):
    drv = make_driver(memory, queue)
    drv.post([b"a"])
    queue.size = size
    queue.ready = True
    with pytest.raises(VirtqueueError, match="queue size"):
        queue.validate()
    assert queue.pop() is None


@pytest.mark.parametrize("field,value,match", [
    ("desc_addr", 0x10008, "aligned"),
    ("avail_addr", 0x20001, "aligned"),
    ("used_addr", 0x30002, "aligned"),
    ("desc_addr", (4 << 20) - 16, "not in guest RAM"),
    ("used_addr", 0xFFFF_F000, "not in guest RAM"),
])
def test_bad_ring_addresses(memory, queue, make_driver, field, value, match):
    make_driver(memory, queue)
    setattr(queue, field, value)
    queue.ready = True
    with pytest.raises(VirtqueueError, match=match):
        queue.validate()


def test_unready_queue_does_nothing(memory, queue, make_driver):
    drv = make_driver(memory, queue)
    drv.post([b"a"])
    assert queue.pop() is None
    queue.push(0, 0)
    assert not queue.needs_interrupt()


# --- malformed chains ------------------------------------------------------------------------
def test_head_index_out_of_range(driver, queue):
    driver.publish(16)
    with pytest.raises(VirtqueueError, match="outside the table"):
        queue.pop()


def test_next_index_out_of_range(driver, queue, memory):
    driver.write_desc(driver.desc, 0, 0x100000, 4, VIRTQ_DESC_F_NEXT, 99)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="outside the table"):
        queue.pop()


def test_descriptor_loop(driver, queue):
    driver.write_desc(driver.desc, 0, 0x100000, 4, VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(driver.desc, 1, 0x100000, 4, VIRTQ_DESC_F_NEXT, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="longer than the queue size"):
        queue.pop()


def test_indirect_loop(driver, queue, memory):
    table = driver.alloc(32)
    driver.write_desc(table, 0, 0x100000, 4, VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(table, 1, 0x100000, 4, VIRTQ_DESC_F_NEXT, 0)
    driver.write_desc(driver.desc, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="longer than the queue size"):
        queue.pop()


def test_nested_indirect(driver, queue):
    table = driver.alloc(16)
    driver.write_desc(table, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0)
    driver.write_desc(driver.desc, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="nested"):
        queue.pop()


@pytest.mark.parametrize("length,flags,match", [
    (0, VIRTQ_DESC_F_INDIRECT, "not a multiple"),
    (24, VIRTQ_DESC_F_INDIRECT, "not a multiple"),
    (16 * 17, VIRTQ_DESC_F_INDIRECT, "exceeds the queue size"),
    (16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, "NEXT"),
])
def test_bad_indirect_descriptor(driver, queue, length, flags, match):
    driver.write_desc(driver.desc, 0, 0x100000, length, flags, 1)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match=match):
        queue.pop()


def test_indirect_table_outside_ram(driver, queue):
    driver.write_desc(driver.desc, 0, 0x7FFF_FFF0, 32, VIRTQ_DESC_F_INDIRECT, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="indirect table"):
        queue.pop()


@pytest.mark.parametrize("addr,length", [
    ((4 << 20) - 2, 4),  # crosses the end of RAM
    (0xC000_0000, 1),  # MMIO hole
    (0xFFFF_FFFF_FFFF_FFF0, 0x20),  # wraps the 64-bit space
])
def test_buffer_outside_ram(driver, queue, addr, length):
    driver.write_desc(driver.desc, 0, addr, length, 0, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="not in guest RAM"):
        queue.pop()


def test_total_length_overflow(driver, queue):
    # Two 2 GiB+ "buffers": the sum passes 4 GiB before RAM is even checked.
    driver.write_desc(driver.desc, 0, 0x100000, 0xFFFF_FFFF, VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(driver.desc, 1, 0x100000, 0xFFFF_FFFF, 0, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError):
        queue.pop()


def test_readable_after_writable(driver, queue):
    driver.write_desc(driver.desc, 0, 0x100000, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    driver.write_desc(driver.desc, 1, 0x100000, 4, 0, 0)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="readable descriptor after"):
        queue.pop()


def test_avail_idx_jumps_too_far(driver, queue):
    driver.set_avail_idx(17)
    with pytest.raises(VirtqueueError, match="ahead"):
        queue.pop()


def test_avail_idx_full_ring_is_fine(driver, queue):
    for _ in range(16):
        driver.post([b"a"])
    assert sum(1 for _ in iter(queue.pop, None)) == 16


def test_used_len_is_u32(driver, queue, memory):
    driver.post([b"a"])
    queue.push(queue.pop().head, 1 << 32 | 5)
    assert struct.unpack("<II", memory.read(driver.used_ring + 4, 8))[1] == 5


def test_max_size_must_be_power_of_two(memory):
    with pytest.raises(ValueError):
        Virtqueue(memory, 100)


def test_write_accepts_memoryview_and_bytearray(driver, queue):
    head = driver.post([], [4, 4])
    chain = queue.pop()
    assert chain.write(memoryview(b"abcdef")) == 6
    assert chain.write(bytearray(b"XY"), offset=6) == 2
    assert driver.written(head) == b"abcdefXY"


@pytest.mark.parametrize("indirect", [False, True])
def test_adjacent_buffers_become_one_segment(driver, queue, indirect):
    """Consecutive pages of one guest buffer: one (gpa, length) per run of adjacent addresses."""
    head = driver.post([b"hdr"], [0x1000, 0x1000, 0x1000], indirect=indirect)
    (hdr, _, _), (first, _, _), (second, _, _), (third, _, _) = driver.buffers[head]
    assert second == first + 0x1000 and third == second + 0x1000
    chain = queue.pop()
    assert chain.readable == [(hdr, 3)]
    assert chain.writable == [(first, 0x3000)]


def test_buffers_with_a_gap_stay_apart(driver, queue, memory):
    driver.write_desc(driver.desc, 0, 0x100000, 0x800, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1)
    driver.write_desc(driver.desc, 1, 0x100900, 0x800, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2)
    driver.write_desc(driver.desc, 2, 0x101100, 0x100, VIRTQ_DESC_F_WRITE, 0)
    driver.publish(0)
    assert queue.pop().writable == [(0x100000, 0x800), (0x100900, 0x900)]
