"""exporter/labels.py on literal inputs: every label value read from another process is
bounded, valid UTF-8 on one line, and prints in the order it reads."""

from __future__ import annotations

import pytest

from exporter.labels import MAX_LABEL_BYTES, bounded


@pytest.mark.parametrize("raw, want", [
    ("shop", "shop"),
    ("shop\nfake_metric 1", "shop?fake_metric 1"),          # no line breaks into the exposition
    ("a\x00b\x7fc\x85d", "a?b?c?d"),                           # C0, DEL, C1 (NEL)
    ("shop\u202elive", "shop?live"),                           # right-to-left override
    ("\u2066api\u2069", "?api?"),                              # bidi isolates
    ("caf\u00e9", "caf\u00e9"),                                # printable non-ASCII stays
    ("bad\udcffbyte", "bad?byte"),                             # a lone surrogate
])
def test_values_are_one_clean_line(raw, want):
    assert bounded(raw) == want


def test_long_values_are_cut_with_a_digest_and_stay_distinct():
    a, b = "x" * 1000 + "a", "x" * 1000 + "b"
    ba, bb = bounded(a), bounded(b)
    assert ba != bb and len(ba.encode()) <= MAX_LABEL_BYTES and len(bb.encode()) <= MAX_LABEL_BYTES
    assert ba == bounded(a) and "~" in ba
    multi = "\u00e9" * 200                                     # cut on a character boundary
    assert bounded(multi).encode("utf-8").decode("utf-8") == bounded(multi)
