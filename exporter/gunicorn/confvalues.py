"""The values and bounds of the static config evaluator (exporter/gunicorn/confeval.py):
what UNKNOWN is, the limits on numbers, strings and lists, and the small pure helpers
that check a value against them before anything expensive is computed."""

from __future__ import annotations

import ast
import operator
import re
import warnings
from dataclasses import dataclass, field

MAX_TEXT = 256 * 1024
MAX_NODES = 50_000
MAX_STEPS = 100_000
MAX_DEPTH = 64
MAX_NUM = 10**15
MAX_STR = 4096
MAX_ITEMS = 256
MAX_PROBLEMS = 20
MAX_IF_NESTING = 20  # deeper `if`s are treated like loops


class _Unknown:
    """The value of anything that cannot be known statically: use the singleton UNKNOWN."""

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        raise TypeError("the truth of UNKNOWN is not known")


UNKNOWN = _Unknown()


@dataclass
class ConfigResult:
    values: dict[str, object] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    complete: bool = True


@dataclass(frozen=True)
class _Ref:
    """A module, function or `os.environ`, known by its path; never a setting's value."""
    path: str


@dataclass(frozen=True)
class _CpuSet:
    """What `os.sched_getaffinity(0)` returns: only its length is used."""
    size: int | None


class _Abort(Exception):
    """Evaluation stops; the message says why."""


_ENVIRON = _Ref("os.environ")
_MODULES = frozenset({"os", "multiprocessing"})
_KNOWN = frozenset({"os.environ", "os.environ.get", "os.getenv", "os.cpu_count",
                    "os.sched_getaffinity", "os.process_cpu_count", "multiprocessing.cpu_count"})
_BUILTINS = frozenset({"int", "float", "str", "bool", "min", "max", "abs", "round", "len",
                       "print"})
_MUTATORS = frozenset({"append", "extend", "insert", "pop", "popitem", "remove", "clear",
                       "update", "setdefault", "sort", "reverse", "__setitem__", "__iadd__"})
_DYNAMIC_NAMES = frozenset({"globals", "locals", "vars", "exec", "eval", "setattr",
                            "delattr", "__builtins__", "builtins"})
_DYNAMIC_ATTRS = frozenset({"__dict__", "__globals__", "f_globals", "f_locals", "modules"})
_NAMED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler,
          ast.MatchAs, ast.MatchStar)
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
        ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
# a format spec with a literal width <= 9999 and precision <= 99 ("{port:>5}", "{x:.2f}")
_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?\d{0,4}[,_]?(?:\.\d{1,2})?[bcdeEfFgGnosxX%]?",
                   re.S)
_SCALARS = (bool, int, float, str, type(None))
# ast.parse warns about odd literals and escapes; a hostile file must not flood the log
_FILENAME = "<gunicorn config>"
warnings.filterwarnings("ignore", module=re.escape(_FILENAME))


def _plain(v: object) -> bool:
    """A value a setting may have (lists and tuples only ever hold plain values)."""
    return isinstance(v, (*_SCALARS, list, tuple))


def _size(v: object) -> int | None:
    """Items in a list/tuple, nested ones included; None beyond the bounds (256 items,
    16 levels, 4096 characters of strings in all)."""
    items, chars, todo = 0, 0, [(v, 0)]
    while todo:
        x, depth = todo.pop()
        if isinstance(x, (list, tuple)):
            items += len(x)
            if items > MAX_ITEMS or depth > 16:
                return None
            todo.extend((y, depth + 1) for y in x)
        elif isinstance(x, str):
            chars += len(x)
            if chars > MAX_STR:
                return None
    return items


def _weight(v: object) -> int:
    """The evaluation steps a Python-level walk over v costs."""
    return 1 + (_size(v) or 0) if isinstance(v, (list, tuple)) else 1


def _has_list(v: object) -> bool:
    return isinstance(v, list) or isinstance(v, tuple) and any(_has_list(x) for x in v)


def _same(a: object, b: object) -> bool:
    """Known and equal, types included (1, 1.0 and True differ)."""
    if a is UNKNOWN or type(a) is not type(b):
        return False
    if a is b:
        return True
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _truth(v: object) -> object:
    if isinstance(v, _CpuSet) and v.size is not None:
        return v.size > 0
    return bool(v) if _plain(v) else UNKNOWN


def _text(v: object, conv: str = "s") -> object:
    """str(v), repr(v) or ascii(v) (conv 's', 'r', 'a') of a plain value, or UNKNOWN."""
    if conv == "s" and isinstance(v, str):
        return v

    def bound(x: object) -> int:  # an upper bound on len(repr(x))
        if isinstance(x, (list, tuple)):
            return 2 + sum(bound(y) + 2 for y in x)
        return 10 * len(x) + 2 if isinstance(x, str) else 32

    if not _plain(v) or bound(v) > 4 * MAX_STR:
        return UNKNOWN
    s = {"s": str, "r": repr, "a": ascii}[conv](v)
    return s if len(s) <= MAX_STR else UNKNOWN


def _base(node: ast.AST) -> str:
    """The variable at the root of `a.b[c].d(...)`, or ''."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _check_tree(tree: ast.AST) -> str | None:
    """Why the tree cannot be analysed (too big, rewrites its namespace), or None."""
    count, todo = 0, [tree]
    while todo:
        node = todo.pop()
        count += 1
        if count > MAX_NODES:
            return f"config file has more than {MAX_NODES} syntax nodes"
        if isinstance(node, ast.Name) and node.id in _DYNAMIC_NAMES or \
                isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_ATTRS:
            word = node.id if isinstance(node, ast.Name) else node.attr
            return f"config file uses {word}: it may rewrite its own variables"
        todo.extend(ast.iter_child_nodes(node))
    return None
