"""A join's members list costs the same in a big room as in a small one: it reads at most
MEMBERS_SCANNED of the room's connections (a full list per join was quadratic)."""

from __future__ import annotations

import pytest
import socketio

from server.apps import chat


@pytest.mark.parametrize("room_size", [3, 150])
async def test_members_reads_a_bounded_number_of_connections(
    room_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = chat.Chat(sio)
    for i in range(room_size):
        sio.manager.basic_enter_room(f"sid{i}", "/", "big", eio_sid=f"eio{i}")
    looked_up: list[str] = []

    async def user_of(_sio: socketio.AsyncServer, sid: str) -> str:
        looked_up.append(sid)
        return f"user-{int(sid[3:]) % 7}"

    monkeypatch.setattr(chat, "user_of", user_of)
    members = await app.members("big")
    assert len(looked_up) == min(room_size, 100)  # MEMBERS_SCANNED
    assert members == sorted({f"user-{i % 7}" for i in range(min(room_size, 7))})
