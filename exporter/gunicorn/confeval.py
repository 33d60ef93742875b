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

Here: the statements and the entry point `evaluate`; the expressions are in confexpr.py,
the values, bounds and their checks in confvalues.py.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection, Mapping

from exporter.gunicorn.confexpr import _Expressions
from exporter.gunicorn.confvalues import (_Abort, _base, _BUILTINS, _check_tree,
                                          ConfigResult, _ENVIRON, _FILENAME, _has_list,
                                          _KNOWN, MAX_IF_NESTING, MAX_NUM, MAX_PROBLEMS,
                                          MAX_STEPS, MAX_STR, MAX_TEXT, _MODULES,
                                          _MUTATORS, _NAMED, _plain, _Ref, _same, _size,
                                          _truth, UNKNOWN, _Unknown, _weight)


class _Evaluator(_Expressions):
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
