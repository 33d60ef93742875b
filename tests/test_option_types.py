"""Every setting has a real type, written once: its parser's return annotation
(exporter/options.py `Option.value_type`), which is also the type of its field of
`Config`; its default is a value of that type and parses to itself."""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import pytest

from exporter.config import Config
from exporter.options import OPTIONS, Option
from exporter.parsing import parse_duration, parse_regex

# Defaults held in a parsed form whose text is not all of it: (the text a user writes, what
# of a parsed value that text fixes). An access format's text does not name its dialect
# (the default's uvicorn format is a gunicorn format text).
SPELLED = {"logs.access-format": (lambda formats: [f.text for f in formats],
                                  lambda formats: [f.text for f in formats])}


def loose_parts(tp) -> list:
    """The parts of a type that say nothing: object, Any, an unparametrised container."""
    if tp in (object, typing.Any) or tp in (tuple, list, dict, set, frozenset):
        return [tp]
    return [p for arg in typing.get_args(tp) if arg is not Ellipsis for p in loose_parts(arg)]


def conforms(value, tp) -> bool:
    """`value` is a `tp`, down into the elements of tuples, frozensets and dicts."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:      # a whole number of seconds is a float in every parser
        return isinstance(value, float)
    if origin is None:
        return isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if not isinstance(value, origin):
        return False
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return all(conforms(v, args[0]) for v in value)
    if origin is tuple:
        return len(value) == len(args) and all(map(conforms, value, args))
    if origin is frozenset:
        return all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    return False


def test_conforms_on_literal_values():
    assert conforms((5432, 6432), tuple[int, ...])
    assert not conforms((5432, "6432"), tuple[int, ...])
    assert not conforms([5432], tuple[int, ...])
    assert not conforms(True, int) and not conforms(60, float) and conforms(60.0, float)
    assert conforms(None, str | None) and not conforms(None, str)
    assert conforms(((re.compile("a"), "b"),), tuple[tuple[re.Pattern, str], ...])
    assert not conforms(((re.compile("a"),),), tuple[tuple[re.Pattern, str], ...])
    assert conforms({"app": 5.0, "*": "threads"}, dict[str, float | str | None])
    assert not conforms({"app": [5]}, dict[str, float | str | None])
    assert conforms(frozenset({0}), frozenset[int] | None)


def test_value_type_is_the_parsers_annotation_and_none_when_unset():
    assert Option("a", "a", parse_duration, 1.0, "").value_type is float
    assert Option("a", "a", parse_regex, None, "").value_type == re.Pattern | None
    assert Option("a", "a", lambda v: v, 1, "").value_type is object
    assert loose_parts(object) and loose_parts(dict[str, typing.Any])
    assert loose_parts(tuple[tuple, ...]) and not loose_parts(tuple[tuple[str, int], ...])


@pytest.mark.parametrize("o", OPTIONS, ids=lambda o: o.key)
def test_every_option_has_a_concrete_type_its_default_has(o):
    tp = o.value_type
    assert not loose_parts(tp), \
        f"{o.key}: type {tp}: annotate the return of {o.parse.__qualname__} precisely"
    assert conforms(o.default, tp), f"{o.key}: default {o.default!r} is not a {tp}"
    if o.default is not None:
        spell, fixed = SPELLED.get(o.key, (lambda v: v, lambda v: v))
        assert fixed(o.parse(spell(o.default))) == fixed(o.default), \
            f"{o.key}: the default does not parse to itself"


def test_configs_fields_have_the_options_types():
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    assert {o.dest: fields[o.dest] for o in OPTIONS} == {o.dest: o.value_type for o in OPTIONS}
    assert [n for n, tp in fields.items() if loose_parts(tp)] == []
    config = Config()
    for o in OPTIONS:
        assert conforms(getattr(config, o.dest), fields[o.dest]), o.key
