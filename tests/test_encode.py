"""exporter/metrics/encode.py writes exactly the bytes prometheus_client's encoders write.

The oracle is the library itself (its OpenMetrics and text encoders, which the exporter
used before): the same families, encoded both ways, for every Accept header Prometheus
sends, must give identical bytes. Families: the full snapshot of the golden test, the
process_* families, and random families with hostile label values and awkward floats.
"""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import ProcessCollector, exposition
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily, Metric)
from prometheus_client.samples import Exemplar, Sample

from exporter.metrics import render, render_web
from exporter.metrics.encode import _Families, _float, choose, encode
from tests.test_docs import full_snapshot

ACCEPTS = [
    "",                                                       # curl
    "text/plain",
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    # Prometheus 2.x and 3.x
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    "application/openmetrics-text",
    "text/plain;version=1.0.0;escaping=underscores",
    # Prometheus 3 with metric_name_escaping_scheme: the library's bytes too
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=2.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
]


def _library(families: list[Metric], accept: str) -> tuple[bytes, str]:
    encoder, content_type = exposition.choose_encoder(accept)
    return encoder(_Families(families)), content_type


def _ours(families: list[Metric], accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose(accept)
    return encoder(families), content_type


def _assert_same(families: list[Metric]) -> None:
    for accept in ACCEPTS:
        want = _library(families, accept)
        got = _ours(families, accept)
        assert got[1] == want[1], accept
        if got[0] != want[0]:
            got_lines, want_lines = got[0].splitlines(), want[0].splitlines()
            first = next((i for i, (a, b) in enumerate(zip(got_lines, want_lines)) if a != b),
                         min(len(got_lines), len(want_lines)))
            raise AssertionError(f"{accept!r}: line {first}: ours "
                                 f"{got_lines[first:first + 1]} != library {want_lines[first:first + 1]}")


def test_full_snapshot_and_process_families_as_the_library_writes_them():
    families = (list(render(full_snapshot())) + list(render_web(True, (3, {"evicted": 1})))
                + list(ProcessCollector(registry=None).collect()))
    assert len(families) > 50
    _assert_same(families)


def test_the_fast_path_wrote_the_full_snapshot():
    """The comparison above means something only if our own path did the writing."""
    families = list(render(full_snapshot()))
    assert encode(families, openmetrics=True).endswith(b"# EOF\n")
    assert b"gunicorn_up_total" not in encode(families, openmetrics=False)


_HOSTILE = ["", "shop", 'a"b', "a\\b", "a\nb", "\\n", '\\"', "ünïcödé", "日本", "🙂",
            "x" * 300, "a=b,c=\"d\"", "}", "{", "#", " ", "\t", "\r"]
_FLOATS = [0, 1, -1, 0.5, 1e-9, 1e-5, 123456.0, 1234567.0, 12345678.0, 1e15, 1e16, 1.5e16,
           2 ** 53, 2 ** 63, -2 ** 63, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan,
           True, False, 3, 10 ** 20, 0.1 + 0.2, -0.0, 7.0e-7, 999999.9, 1000000.1]


def _random_families(rng: random.Random) -> list[Metric]:
    families: list[Metric] = []
    for i in range(40):
        kind = rng.choice(["gauge", "counter", "info", "histogram"])
        labels = rng.sample(["app", "worker", "state", "le_x", "zeta", "a"], rng.randint(0, 3))
        doc = rng.choice(["plain help", 'with "quotes"', "back\\slash", "new\nline", "ü"])
        name = f"fam_{i}"

        def lv():
            return [rng.choice(_HOSTILE) + str(rng.randint(0, 9)) for _ in labels]
        if kind == "gauge":
            f = GaugeMetricFamily(name, doc, labels=labels, unit=rng.choice(["", "seconds"]))
            if f.unit:
                f = GaugeMetricFamily(name + "_seconds", doc, labels=labels, unit="seconds")
            for _ in range(rng.randint(0, 6)):
                f.add_metric(lv(), rng.choice(_FLOATS))
        elif kind == "counter":
            f = CounterMetricFamily(name, doc, labels=labels)
            for _ in range(rng.randint(0, 6)):
                f.add_metric(lv(), abs(rng.choice(_FLOATS)),
                             created=rng.choice([None, 1_700_000_000.5]))
        elif kind == "info":
            f = InfoMetricFamily(name, doc, labels=labels)
            for _ in range(rng.randint(0, 3)):
                f.add_metric(lv(), {"version": rng.choice(_HOSTILE)})
        else:
            f = HistogramMetricFamily(name, doc, labels=labels)
            for _ in range(rng.randint(0, 3)):
                f.add_metric(lv(), [("0.1", 1), ("1.0", 2), ("+Inf", 3)], sum_value=rng.choice(_FLOATS))
        families.append(f)
    return families


@pytest.mark.parametrize("seed", range(25))
def test_random_families_with_hostile_labels_and_awkward_floats(seed):
    _assert_same(_random_families(random.Random(seed)))


def _one(sample_name="g", labels=None, **sample):
    f = GaugeMetricFamily("g", "help")
    f.samples.append(Sample(sample_name, labels or {}, 1.0, *[sample.get(k) for k in
                                                              ("timestamp", "exemplar")]))
    return [f]


def _renamed(name):
    """A family named `name`, which prometheus-client < 0.20 (Debian bookworm's 0.16) refuses
    to construct but can meet (the encoders take any object with .name and .samples)."""
    f = GaugeMetricFamily("placeholder", "help", value=1)
    f.name = name
    f.samples = [s._replace(name=name) for s in f.samples]
    return [f]


@pytest.mark.parametrize("families", [
    _one(labels={"bad-label": "x"}),                        # a label name outside [a-zA-Z_]...
    _one(labels={"0digit": "x"}),
    _one(sample_name="g.dotted"),                           # a metric name outside the set
    _one(timestamp=1_700_000_000.25),
    _renamed("bad.name"),
    [GaugeMetricFamily("rv:ratio", "help", value=1)],       # ':' rewritten in OpenMetrics
], ids=["label-dash", "label-digit", "sample-dot", "timestamp", "family-dot", "colon"])
def test_what_the_fast_path_does_not_write_goes_to_the_library(families):
    _assert_same(families)
    with pytest.raises(Exception):
        encode(families, openmetrics=True)


def test_exemplars_go_to_the_library():
    f = CounterMetricFamily("c", "help")
    f.add_metric([], 3, exemplar=Exemplar({"trace_id": "abc"}, 1.0))
    encoder, _ = choose("application/openmetrics-text; version=1.0.0")
    assert encoder([f]) == exposition.choose_encoder("application/openmetrics-text; version=1.0.0")[0](_Families([f]))
    assert b'# {trace_id="abc"} 1.0' in encoder([f])


@pytest.mark.parametrize("value,text", [
    (1, "1.0"), (0, "0.0"), (-0.0, "-0.0"), (0.5, "0.5"), (1e-05, "1e-05"),
    (123456.0, "123456.0"), (1234567.0, "1.234567e+06"), (12345678.5, "1.23456785e+07"),
    (1e16, "1e+16"), (-12345678.0, "-12345678.0"), (math.inf, "+Inf"),
    (-math.inf, "-Inf"), (math.nan, "NaN"), (True, "1.0"),
])
def test_float_formatting_on_literals(value, text):
    assert _float(value) == text


def test_samples_that_cannot_be_written_are_dropped_before_encoding():
    """render()'s last check: a value that is not a number, a label value that is not
    UTF-8 text (a lone surrogate) or not a string goes, the family's other samples stay."""
    from exporter.metrics import _checked
    f = GaugeMetricFamily("g", "help", labels=["app"])
    f.add_metric(["ok"], 1)
    f.add_metric(["ok2"], 2.5)
    f.add_metric(["ünï"], True)
    f.add_metric(["bad\udcff"], 1)
    f.add_metric(["nan-text"], "not a number")
    f.add_metric(["none"], None)
    f.samples.append(Sample("g", {"app": 7}, 1.0, None, None))
    f.samples.append(Sample("g", {"app": b"bytes"}, 1.0, None, None))
    f.add_metric(["huge-int"], 10 ** 400)
    kept = _checked(f)
    assert [s.labels["app"] for s in kept.samples] == ["ok", "ok2", "ünï"]
    encode([kept], openmetrics=True)      # and the rest encodes
