"""Validation of client payloads for the bundled apps: a bad payload gets
`{ok: false, error}` in the ack, never an exception."""

from __future__ import annotations

import re
from typing import Any

ROOM_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TEXT_CHARS = 4000


class BadPayload(Exception):
    pass


def fail(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def require_dict(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadPayload("payload must be an object")
    return data


def room_of(data: object) -> str:
    room = require_dict(data).get("room")
    if not isinstance(room, str) or not ROOM_PATTERN.match(room):
        raise BadPayload("room must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return room


def text_of(data: object) -> str:
    text = require_dict(data).get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadPayload("text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise BadPayload(f"text is over {MAX_TEXT_CHARS} characters")
    return text
