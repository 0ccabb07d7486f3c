"""Catch Unix seconds shown to people: a bare 10-digit number from 2001 to 2286 where a time is meant."""

from __future__ import annotations

import html
import re

#: 10 digits starting 1 or 2 (2001-09-09 .. 2033-05-18 and on), not part of a longer number, id or hash.
UNIX_SECONDS = re.compile(r"(?<![\w.#/-])[12]\d{9}(?![\w.])")


def unix_seconds_in(text: str) -> list[str]:
    """Every number in ``text`` (HTML tags and attributes left out) that looks like Unix seconds."""
    visible = html.unescape(re.sub(r"<(script|style)\b.*?</\1>|<[^>]*>", " ", text, flags=re.S))
    return UNIX_SECONDS.findall(visible)


def assert_no_unix_seconds(text: str, where: str) -> None:
    """Fail with the offending numbers and their surroundings."""
    visible = html.unescape(re.sub(r"<(script|style)\b.*?</\1>|<[^>]*>", " ", text, flags=re.S))
    hits = [visible[max(0, m.start() - 40):m.end() + 20] for m in UNIX_SECONDS.finditer(visible)]
    assert not hits, f"{where} shows Unix seconds to people: {hits}"
