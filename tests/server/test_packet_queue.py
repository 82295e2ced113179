"""`server.eio.packet_queue.PacketQueue`: the part of `asyncio.Queue` python-engineio
uses, with what a connection's queue needs beside it (no timing here: the order,
the wake-ups and the bookkeeping)."""

from __future__ import annotations

import asyncio

import pytest
from engineio import packet as eio_packet

from server.eio.packet_queue import COMPACT_AFTER, PacketQueue


async def test_first_in_first_out_across_compaction() -> None:
    queue = PacketQueue()
    taken = []
    for i in range(COMPACT_AFTER * 3):
        queue.put_nowait(i)
        queue.put_nowait(f"{i}b")
        taken.append(queue.get_nowait())  # the head moves past COMPACT_AFTER
    while not queue.empty():
        taken.append(queue.get_nowait())
    expected = [x for i in range(COMPACT_AFTER * 3) for x in (i, f"{i}b")]
    assert taken == expected
    assert queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_get_wakes_on_put_and_idle_puts_are_announced() -> None:
    queue = PacketQueue()
    announced = []
    queue.on_idle_put = lambda: announced.append(queue.qsize())
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")  # someone waits: handed over, not announced
    assert await asyncio.wait_for(getter, 1) == "a"
    queue.put_nowait("b")  # nobody waits: announced
    assert announced == [1]


async def test_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    queue = PacketQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it takes it
    await asyncio.sleep(0)
    assert await asyncio.wait_for(second, 1) == "x"


async def test_join_waits_for_task_done() -> None:
    queue = PacketQueue()
    await queue.join()  # nothing put: returns at once
    queue.put_nowait(1)
    joined = asyncio.ensure_future(queue.join())
    queue.get_nowait()
    await asyncio.sleep(0)
    assert not joined.done()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        queue.task_done()


def test_the_queue_counts_the_payload_bytes_it_holds() -> None:
    queue = PacketQueue()
    queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, "x" * 1000))
    queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, b"y" * 24))
    queue.put_nowait(eio_packet.Packet(eio_packet.PING))
    assert queue.nbytes == 1024
    queue.get_nowait()
    assert queue.nbytes == 24
    queue.get_nowait()
    queue.get_nowait()
    assert queue.nbytes == 0 and queue.empty()
