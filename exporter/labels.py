"""Bounded label values: anything read from another process ends up as a label only
through `bounded()`.

A label value is capped at `MAX_LABEL_BYTES` of UTF-8. A longer value is cut on a
character boundary and gets `~` and the first 8 hex digits of its SHA-256, so two long
values that share a prefix stay two series, and the same value always gives the same
label. Control characters (C0, C1), bidirectional overrides and lone surrogates are
replaced, so a value is always valid UTF-8 on one line and prints in the order it reads.
"""

from __future__ import annotations

import hashlib

MAX_LABEL_BYTES = 128
_SUFFIX_LEN = 9  # "~" + 8 hex digits
# C0 and C1 controls, DEL, and the bidirectional overrides and isolates (which make a
# value print in another order than it compares: "shop" that reads as another name)
_CONTROL = {c: "?" for c in (*range(32), *range(127, 160), *range(0x202A, 0x202F),
                              *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def bounded(value: object, limit: int = MAX_LABEL_BYTES) -> str:
    """`value` as a label value of at most `limit` UTF-8 bytes (see the module docstring).

    The result always encodes as UTF-8: lone surrogates (from undecodable bytes, or a
    JSON "\\ud800") become "?", as do control characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit // 4 and text.isprintable():
        return text  # the common case: short and clean (4 bytes per char at most)
    # Cut before translating: a multi-megabyte value costs one slice, not a full pass.
    head = text[: limit + 1].translate(_CONTROL)
    raw = head.encode("utf-8", "replace")
    if len(raw) <= limit and len(text) <= limit:
        return raw.decode("utf-8")
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8]
    cut = raw[: limit - _SUFFIX_LEN].decode("utf-8", "ignore")
    return f"{cut}~{digest}"
