"""Cutting text to a channel's length limit, counted in characters or in UTF-16 units."""

from __future__ import annotations

ELLIPSIS = "…"


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS if limit > 0 else ""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts message length in."""
    return len(text.encode("utf-16-le")) // 2


def clip_utf16(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-16 code units, ending in an ellipsis when cut."""
    if utf16_len(text) <= limit:
        return text
    out, used = [], 1  # the ellipsis is one unit
    for char in text:
        units = 2 if ord(char) > 0xFFFF else 1
        if used + units > limit:
            break
        out.append(char)
        used += units
    return "".join(out) + ELLIPSIS
