"""Expressions of the static config evaluator (exporter/gunicorn/confeval.py): literals,
names, f-strings, arithmetic, comparisons, conditionals and the few known calls. A
mixin of `_Evaluator`, which provides the bookkeeping (`step`, `bounded`, `lookup`,
`note`) and the statements."""

from __future__ import annotations

import ast
import math

from exporter.gunicorn.confvalues import (_ARITH, _BUILTINS, _CMP, _CpuSet, _ENVIRON,
                                          MAX_DEPTH, MAX_ITEMS, MAX_STR, _plain, _Ref,
                                          _same, _SCALARS, _size, _SPEC, _text, _truth,
                                          UNKNOWN, _weight)


class _Expressions:
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
