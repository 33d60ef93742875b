"""Static, bounded evaluation of gunicorn config files (`gunicorn.conf.py`).

The exporter runs as root and reads config files any local user can write, so a file is
hostile input: it is parsed with `ast` and a small side-effect-free subset of Python is
interpreted; nothing in it is ever executed or imported. Understood: literals, f-strings,
arithmetic, comparisons, `and`/`or`/`x if c else y`, module-level variables, `if`/`else`,
imports of `os`/`multiprocessing`, `os.cpu_count()`, `multiprocessing.cpu_count()`,
`len(os.sched_getaffinity(0))`, `os.environ.get`/`os.getenv`/`os.environ[k]` against the
master's environment, and `int float str bool min max abs round len`. Anything else is
`UNKNOWN`, as is every name a statement that is not followed may change (names stored in
a loop, `def` or `try`; lists and `os.environ` that a call or item assignment may mutate).
A file that uses `globals()`, `exec` and the like is not analysed at all.

Bounds: text <= 256 KiB, <= 50,000 syntax nodes, <= 100,000 evaluation steps; beyond any
of these, or when the file does not parse, the result is `complete=False`. Within a file:
expressions nest <= 64 deep; numbers stay within +-1e15, strings within 4096 characters,
lists and tuples within 256 items and 4096 characters in all (nested ones included, 16
levels deep): beyond these a value is `UNKNOWN`, checked before anything expensive is
computed. Work over lists is charged to the step budget by size, so no file costs more
than about 0.2 s. At most 20 problems, each <= 200 characters, quoting <= 60 of the file.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Collection, Mapping
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


class _Evaluator:
    """Runs a module body over known values and UNKNOWN; raises _Abort past MAX_STEPS."""

    def __init__(self, names: frozenset[str], environ: Mapping[str, str] | None,
                 cpu_count: int | None, affinity: int | None) -> None:
        self.names, self.cpu_count, self.affinity = names, cpu_count, affinity
        self.environ: Mapping[str, str] = environ if environ is not None else {}
        self.environ_ok = environ is not None
        self.dirty: set[str] = set()      # environment variables the file sets
        self.env: dict[str, object] = {}  # module-level variables
        self.where: dict[str, int] = {}   # line of each variable's last change
        self.star = False                 # after `from somewhere import *`
        self.deferred: set[str] = set()   # what functions may mutate once called
        self.rebinds: set[str] = set()    # what functions declare `global`
        self.steps = self.line = 0
        self.problems: list[str] = []

    # -- bookkeeping ----------------------------------------------------------------
    def note(self, msg: str) -> None:
        if len(self.problems) < MAX_PROBLEMS and msg[:200] not in self.problems:
            self.problems.append(msg[:200])

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_STEPS:
            raise _Abort(f"config file needs more than {MAX_STEPS} evaluation steps")

    def too_big(self) -> _Unknown:
        self.note(f"line {self.line}: a value exceeds the evaluation bounds")
        return UNKNOWN

    def bounded(self, v: object) -> object:
        if isinstance(v, bool) or not _plain(v) or v is None:
            return v
        if isinstance(v, int):
            ok = abs(v) <= MAX_NUM
        elif isinstance(v, float):
            ok = math.isfinite(v) and abs(v) <= MAX_NUM
        elif isinstance(v, str):
            ok = len(v) <= MAX_STR
        else:
            self.step(len(v))
            ok = _size(v) is not None
        return v if ok else self.too_big()

    def assign(self, name: str, value: object) -> None:
        self.env[name] = value
        self.where[name] = self.line

    def lookup(self, name: str) -> object:
        if name in self.env:
            return self.env[name]
        return _Ref(name) if name in _BUILTINS and not self.star else UNKNOWN

    @staticmethod
    def attr(value: object, attr: str) -> object:
        path = f"{value.path}.{attr}" if isinstance(value, _Ref) else ""
        return _Ref(path) if path in _KNOWN else UNKNOWN

    def resolve(self, node: ast.AST) -> object:
        """A name or attribute chain (`os.environ.get`), evaluating nothing else."""
        attrs: list[str] = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        value = self.lookup(node.id) if isinstance(node, ast.Name) else UNKNOWN
        for attr in reversed(attrs):
            value = self.attr(value, attr)
        return value

    def environ_lost(self) -> None:
        if self.environ_ok:
            self.note(f"line {self.line}: os.environ may change here; later reads unknown")
        self.environ_ok = False

    def getenv(self, key: object, default: object) -> object:
        if not self.environ_ok or not isinstance(key, str) or key in self.dirty:
            return UNKNOWN
        return self.bounded(self.environ[key]) if key in self.environ else default

    # -- what code that is not followed may change ------------------------------------
    def effects(self, *nodes: ast.AST) -> None:
        """Forget what running `nodes` may change: the names they store, and the lists
        and os.environ that their calls (when not known harmless) or item and attribute
        assignments may mutate. Function bodies do not run now: what they may change
        is forgotten at every later call of an unknown function."""
        stored: set[str] = set()
        touched: set[str] = set()  # names whose object may be mutated
        loaded: set[str] = set()   # names passed to calls
        callee: set[int] = set()
        later: set[int] = set()    # nodes inside function bodies
        impure = star = False
        for sub in (s for node in nodes for s in ast.walk(node)):
            if isinstance(sub, ast.Name) and not isinstance(sub.ctx, ast.Load):
                stored.add(sub.id)
            elif isinstance(sub, (ast.Global, ast.Nonlocal)):
                stored.update(sub.names)
                self.rebinds.update(sub.names)
            elif isinstance(sub, ast.alias):
                star = star or sub.name == "*"
                stored.add((sub.asname or sub.name).split(".")[0])
            elif isinstance(sub, _NAMED) and sub.name or isinstance(sub, ast.MatchMapping) \
                    and sub.rest:
                stored.add(sub.rest if isinstance(sub, ast.MatchMapping) else sub.name)
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                later.update(map(id, sub.body if isinstance(sub.body, list) else [sub.body]))
            if id(sub) in later:
                later.update(map(id, ast.iter_child_nodes(sub)))
                if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) \
                        and sub.func.attr in _MUTATORS:
                    self.deferred.add(_base(sub.func))
                elif isinstance(sub, (ast.Attribute, ast.Subscript)) \
                        and not isinstance(sub.ctx, ast.Load):
                    self.deferred.add(_base(sub))
            elif isinstance(sub, ast.Call):
                callee.add(id(sub.func))
                if not isinstance(self.resolve(sub.func), _Ref):
                    impure = True
                    if isinstance(sub.func, ast.Attribute) and sub.func.attr in _MUTATORS:
                        touched.add(_base(sub.func))
            elif isinstance(sub, ast.Attribute) and id(sub) in callee:
                callee.add(id(sub.value))
            elif isinstance(sub, (ast.Attribute, ast.Subscript)) \
                    and not isinstance(sub.ctx, ast.Load):
                touched.add(_base(sub))
            elif isinstance(sub, ast.Name) and id(sub) not in callee:
                loaded.add(sub.id)
        for name in stored - {"*"}:
            self.assign(name, UNKNOWN)
        if star:
            self.star_import()
        if impure:
            touched |= loaded | self.deferred
            for name in self.rebinds:
                self.assign(name, UNKNOWN)
        self.invalidate(touched)

    def invalidate(self, names: set[str]) -> None:
        """These objects may be mutated: os.environ, and any list (lists may alias)."""
        values = [self.env.get(name) for name in names]
        if any(isinstance(v, _Ref) and v.path in ("os", "os.environ") for v in values):
            self.environ_lost()
        if any(_has_list(v) for v in values):
            self.step(sum(_weight(v) for v in self.env.values()))
            for name in [n for n, v in self.env.items() if _has_list(v)]:
                self.assign(name, UNKNOWN)

    def star_import(self) -> None:
        self.star = True  # any name may be rebound from now on, builtins included
        for name in set(self.env) | self.names:
            self.assign(name, UNKNOWN)

    # -- statements -----------------------------------------------------------------
    def block(self, body: list[ast.stmt], nest: int) -> None:
        for stmt in body:
            self.step()
            self.line = stmt.lineno
            self.statement(stmt, nest)

    def statement(self, stmt: ast.stmt, nest: int) -> None:
        if isinstance(stmt, ast.Expr):
            self.expr_statement(stmt.value)
        elif isinstance(stmt, ast.Assign):
            value = self.top(stmt.value)
            for target in stmt.targets:
                self.store(target, value)
        elif isinstance(stmt, ast.AnnAssign):
            self.effects(stmt.annotation)
            if stmt.value is not None:
                self.store(stmt.target, self.top(stmt.value))
        elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
            value, name = self.top(stmt.value), stmt.target.id
            old = self.lookup(name)
            if isinstance(old, list):  # changed in place: its aliases too
                self.invalidate({name})
            self.assign(name, self.binop(stmt.op, old, value))
        elif isinstance(stmt, ast.If) and nest < MAX_IF_NESTING:
            self.if_statement(stmt, nest)
        elif isinstance(stmt, ast.Import):
            for a in stmt.names:  # `import os.path` binds os
                module = a.name if a.asname else a.name.split(".")[0]
                self.assign(a.asname or module, _Ref(module) if module in _MODULES else UNKNOWN)
        elif isinstance(stmt, ast.ImportFrom) and all(a.name != "*" for a in stmt.names):
            module = stmt.module if stmt.level == 0 else None
            for a in stmt.names:
                path = f"{module}.{a.name}" if module in _MODULES else ""
                self.assign(a.asname or a.name, _Ref(path) if path in _KNOWN else UNKNOWN)
        elif not isinstance(stmt, (ast.Pass, ast.Global, ast.Nonlocal)):  # no-ops here
            self.effects(stmt)

    def top(self, node: ast.expr) -> object:
        """Evaluate a statement's expression, then forget what its calls may change."""
        value = self.expr(node, 0)
        self.effects(node)
        return value

    def expr_statement(self, node: ast.expr) -> None:
        """Only `os.environ.setdefault(key, value)` matters: `key` is no longer known."""
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "setdefault" \
                and self.resolve(func.value) == _ENVIRON and node.args:
            self.set_environ(node.args[0])
            node = ast.Tuple(elts=node.args[1:] + [k.value for k in node.keywords])
        self.effects(node)

    def set_environ(self, key_node: ast.expr) -> None:
        key = self.expr(key_node, 0)
        self.effects(key_node)
        if isinstance(key, str):
            self.dirty.add(key)
        else:
            self.environ_lost()

    def store(self, target: ast.expr, value: object) -> None:
        if isinstance(target, ast.Name):
            self.assign(target.id, value)
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (list, tuple)) \
                and len(value) == len(target.elts) \
                and all(isinstance(e, ast.Name) for e in target.elts):
            for elt, item in zip(target.elts, value):
                self.assign(elt.id, item)
        elif isinstance(target, ast.Subscript) and self.resolve(target.value) == _ENVIRON:
            self.set_environ(target.slice)
        else:
            self.effects(target)

    def if_statement(self, stmt: ast.If, nest: int) -> None:
        test = _truth(self.top(stmt.test))
        if test is not UNKNOWN:
            self.block(stmt.body if test else stmt.orelse, nest + 1)
            return
        self.step(len(self.env))
        before = dict(self.env)
        self.block(stmt.body, nest + 1)
        after_body, self.env = self.env, before
        self.block(stmt.orelse, nest + 1)
        self.line = stmt.lineno
        self.step(len(self.env) + len(after_body))
        for name in self.env.keys() | after_body.keys():
            a, b = self.env.get(name, UNKNOWN), after_body.get(name, UNKNOWN)
            self.step(0 if a is b else _weight(a))
            if not _same(a, b):
                self.assign(name, UNKNOWN)

    # -- expressions ----------------------------------------------------------------
    def expr(self, node: ast.AST, depth: int) -> object:
        self.step()
        if depth > MAX_DEPTH:
            self.note(f"line {self.line}: expression nested deeper than {MAX_DEPTH}")
            return UNKNOWN
        handler = getattr(self, "e_" + type(node).__name__, None)
        return handler(node, depth + 1) if handler else UNKNOWN

    def e_Constant(self, node: ast.Constant, depth: int) -> object:
        return self.bounded(node.value) if isinstance(node.value, _SCALARS) else UNKNOWN

    def e_Name(self, node: ast.Name, depth: int) -> object:
        return self.lookup(node.id)

    def e_Attribute(self, node: ast.Attribute, depth: int) -> object:
        return self.attr(self.expr(node.value, depth), node.attr)

    def e_List(self, node: ast.List | ast.Tuple, depth: int) -> object:
        if len(node.elts) > MAX_ITEMS:
            return self.too_big()
        items = []
        for elt in node.elts:
            items.append(self.expr(elt, depth))
            if not _plain(items[-1]):
                return UNKNOWN
        return self.bounded(items if isinstance(node, ast.List) else tuple(items))

    e_Tuple = e_List

    def e_Subscript(self, node: ast.Subscript, depth: int) -> object:
        if self.expr(node.value, depth) != _ENVIRON:
            return UNKNOWN
        key = self.expr(node.slice, depth)
        if self.environ_ok and isinstance(key, str) and key not in self.environ \
                and key not in self.dirty:
            self.note(f"line {self.line}: os.environ[{ascii(key[:60])}] is not set")
        return self.getenv(key, UNKNOWN)

    def e_UnaryOp(self, node: ast.UnaryOp, depth: int) -> object:
        v = self.expr(node.operand, depth)
        if isinstance(node.op, ast.Not):
            t = _truth(v)
            return UNKNOWN if t is UNKNOWN else not t
        if isinstance(v, (int, float)) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -v if isinstance(node.op, ast.USub) else +v
        return UNKNOWN

    def e_BinOp(self, node: ast.BinOp, depth: int) -> object:
        return self.binop(node.op, self.expr(node.left, depth), self.expr(node.right, depth))

    def binop(self, op: ast.operator, a: object, b: object) -> object:
        """Sizes are checked before anything is computed: `10**10**10` costs nothing."""
        if not (_plain(a) and _plain(b)):
            return UNKNOWN
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if isinstance(op, ast.Pow):  # a known int exponent 0..64, a result in bounds
                if type(b) not in (int, bool) or b < 0:
                    return UNKNOWN
                return self.too_big() if b > 64 or abs(a) > 1 and b * math.log2(abs(a)) > 50 \
                    else self.bounded(a ** b)
            try:
                return self.bounded(_ARITH[type(op)](a, b)) if type(op) in _ARITH else UNKNOWN
            except ArithmeticError:  # division by zero
                return UNKNOWN
        if isinstance(op, ast.Add) and type(a) is type(b) and isinstance(a, (str, list, tuple)):
            limit = MAX_STR if isinstance(a, str) else MAX_ITEMS
            return self.bounded(a + b) if len(a) + len(b) <= limit else self.too_big()
        seq, n = (b, a) if isinstance(a, int) else (a, b)
        if isinstance(op, ast.Mult) and type(n) in (int, bool) \
                and isinstance(seq, (str, list, tuple)):
            self.step(_weight(seq))
            size, limit = (len(seq), MAX_STR) if isinstance(seq, str) else (_size(seq), MAX_ITEMS)
            return self.bounded(seq * n) if (size or 0) * max(n, 0) <= limit else self.too_big()
        return UNKNOWN

    def e_BoolOp(self, node: ast.BoolOp, depth: int) -> object:
        for sub in node.values[:-1]:
            value = self.expr(sub, depth)
            truth = _truth(value)
            if truth is UNKNOWN:
                return UNKNOWN
            if truth is not isinstance(node.op, ast.And):  # and: stop at false, or: true
                return value
        return self.expr(node.values[-1], depth)

    def e_Compare(self, node: ast.Compare, depth: int) -> object:
        left, result = self.expr(node.left, depth), True
        for op, right_node in zip(node.ops, node.comparators):
            right = self.expr(right_node, depth)
            r = self.compare(op, left, right)
            if r is False:  # Python stops at the first False, whatever came before
                return False
            result = UNKNOWN if r is UNKNOWN else result
            left = right
        return result

    def compare(self, op: ast.cmpop, a: object, b: object) -> object:
        if isinstance(op, (ast.Is, ast.IsNot)):  # only against None, True, False
            if UNKNOWN in (a, b) or not any(x is None or isinstance(x, bool) for x in (a, b)):
                return UNKNOWN
            return (a is b) == isinstance(op, ast.Is)
        if isinstance(op, (ast.In, ast.NotIn)) and b == _ENVIRON:
            if not self.environ_ok or not isinstance(a, str) or a in self.dirty:
                return UNKNOWN
            return (a in self.environ) == isinstance(op, ast.In)
        if not (_plain(a) and _plain(b)):
            return UNKNOWN
        try:
            return bool(_CMP[type(op)](a, b))
        except (TypeError, ValueError):
            return UNKNOWN

    def e_IfExp(self, node: ast.IfExp, depth: int) -> object:
        test = _truth(self.expr(node.test, depth))
        if test is not UNKNOWN:
            return self.expr(node.body if test else node.orelse, depth)
        a, b = self.expr(node.body, depth), self.expr(node.orelse, depth)
        self.step(_weight(a))
        return a if _same(a, b) else UNKNOWN

    def e_JoinedStr(self, node: ast.JoinedStr, depth: int) -> object:
        out = ""
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                s = self.formatted(part, depth)
            else:
                s = part.value if isinstance(part, ast.Constant) else UNKNOWN
            if not isinstance(s, str) or len(out) + len(s) > MAX_STR:
                return UNKNOWN
            out += s
        return out

    def formatted(self, node: ast.FormattedValue, depth: int) -> object:
        value, spec = self.expr(node.value, depth), ""
        if node.format_spec is not None:  # literal specs only, width and precision small
            parts = getattr(node.format_spec, "values", [None])
            if not all(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts):
                return UNKNOWN
            spec = "".join(p.value for p in parts)
        conv = {115: "s", 114: "r", 97: "a"}.get(node.conversion)
        if not _SPEC.fullmatch(spec) or spec and not conv and not isinstance(value, _SCALARS):
            return UNKNOWN
        if conv or not isinstance(value, _SCALARS):
            self.step(_weight(value))
            value = _text(value, conv or "s")
        try:
            s = format(value, spec) if value is not UNKNOWN else UNKNOWN
        except (TypeError, ValueError):
            return UNKNOWN
        return s if isinstance(s, str) and len(s) <= MAX_STR else UNKNOWN

    def e_Call(self, node: ast.Call, depth: int) -> object:
        ref = self.expr(node.func, depth)
        if not isinstance(ref, _Ref) or any(isinstance(a, ast.Starred) for a in node.args) \
                or any(k.arg is None for k in node.keywords):
            return UNKNOWN
        args = [self.expr(a, depth) for a in node.args]
        kwargs = {k.arg: self.expr(k.value, depth) for k in node.keywords}
        if ref.path in ("os.getenv", "os.environ.get"):
            if not 1 <= len(args) <= 2 or set(kwargs) - {"default"} or len(args) + len(kwargs) > 2:
                return UNKNOWN
            return self.getenv(args[0], args[1] if len(args) == 2 else kwargs.get("default"))
        if kwargs:
            return UNKNOWN
        if ref.path in ("os.cpu_count", "multiprocessing.cpu_count", "os.process_cpu_count"):
            count = self.affinity if ref.path == "os.process_cpu_count" else self.cpu_count
            return UNKNOWN if count is None or args else count
        if ref.path == "os.sched_getaffinity":
            return _CpuSet(self.affinity) if args == [0] and type(args[0]) is int else UNKNOWN
        if ref.path == "len" and len(args) == 1 and isinstance(args[0], _CpuSet):
            return UNKNOWN if args[0].size is None else args[0].size
        if ref.path not in _BUILTINS or not all(_plain(a) for a in args):
            return UNKNOWN
        self.step(sum(map(_weight, args)))
        try:
            return self.bounded(self.builtin(ref.path, *args))
        except (TypeError, ValueError, ArithmeticError):  # as in Python: int("abc")
            return UNKNOWN

    @staticmethod
    def builtin(name: str, *args: object) -> object:
        """Builtins over plain values; strings are converted only when short."""
        x = args[0] if args else None
        if name in ("int", "float") and isinstance(x, str) and len(x) > 64:
            return UNKNOWN
        if name == "int":
            return int(*args) if isinstance(x, (int, float)) and len(args) == 1 \
                or isinstance(x, str) else UNKNOWN
        if name == "float":
            return float(x) if len(args) == 1 and isinstance(x, (int, float, str)) else UNKNOWN
        if name == "str" and len(args) <= 1:
            return _text(x) if args else ""
        if name == "bool" and len(args) <= 1:
            return _truth(x) if args else False
        if name in ("min", "max") and args:
            items = x if len(args) == 1 else args
            if isinstance(items, (list, tuple, str)):
                return min(items) if name == "min" else max(items)
        if name == "abs" and isinstance(x, (int, float)):
            return abs(x)
        if name == "len" and isinstance(x, (str, list, tuple)):
            return len(x)
        if name == "round" and isinstance(x, (int, float)):
            n = args[1] if len(args) > 1 else None
            return round(*args) if n is None or type(n) is int and -20 <= n <= 20 else UNKNOWN
        return None if name == "print" else UNKNOWN


def _failed(problem: str) -> ConfigResult:
    return ConfigResult({}, set(), [problem[:200]], False)


def evaluate(text: str, *, names: Collection[str], environ: Mapping[str, str] | None,
             cpu_count: int | None, affinity: int | None) -> ConfigResult:
    """Evaluate a config file's module level statically; never raises, never runs it.

    `values`: the known final value of each setting in `names` that the file assigns;
    `unknown`: those it assigns a value that cannot be known. `complete=False` (values
    empty): the file could not be analysed, so every setting is unknown.
    """
    try:
        if len(text) > MAX_TEXT:
            return _failed(f"config file larger than {MAX_TEXT // 1024} KiB")
        try:
            tree = ast.parse(text, _FILENAME)
        except SyntaxError as e:
            where = f" (line {e.lineno})" if e.lineno else ""
            return _failed(f"config file does not parse{where}: {str(e.msg)[:60]}")
        except (ValueError, RecursionError, MemoryError, OverflowError) as e:
            return _failed(f"config file does not parse ({type(e).__name__})")
        problem = _check_tree(tree)
        if problem:
            return _failed(problem)
        ev = _Evaluator(frozenset(names), environ, cpu_count, affinity)
        ev.block(tree.body, 0)
        result = ConfigResult({}, set(), ev.problems, True)
        for name in sorted(ev.names & ev.env.keys()):
            if _plain(ev.env[name]):
                result.values[name] = ev.env[name]
            else:
                result.unknown.add(name)
                ev.note(f"{name}: value not known statically (line {ev.where[name]})")
        return result
    except _Abort as e:
        return _failed(str(e))
    except Exception as e:  # RecursionError, MemoryError...: a file never breaks a scrape
        return _failed(f"config file could not be evaluated ({type(e).__name__})")
