"""exporter.gunicorn.confeval: gunicorn config files evaluated statically, never run.

Every input is a literal string; nothing here starts a process or reads a file.
"""

import ast
import os
import random

import pytest

from exporter.gunicorn import confeval
from exporter.gunicorn.confeval import UNKNOWN, ConfigResult, evaluate
from exporter.gunicorn.confvalues import MAX_NODES, MAX_STEPS, MAX_TEXT

SETTINGS = ("workers", "timeout", "bind", "proc_name", "worker_class", "threads",
            "worker_connections", "keepalive", "backlog", "max_requests", "control_socket",
            "reuse_port", "worker_tmp_dir")


def run(text: str, environ: dict | None = {}, cpu_count: int | None = 4,
        affinity: int | None = 2, names=SETTINGS) -> ConfigResult:
    result = evaluate(text, names=names, environ=environ, cpu_count=cpu_count,
                      affinity=affinity)
    assert len(result.problems) <= 20
    assert all(len(p) <= 200 for p in result.problems)
    assert result.unknown.isdisjoint(result.values)
    assert UNKNOWN not in result.values.values()
    return result


def test_unknown_is_a_singleton_with_a_readable_repr():
    assert repr(UNKNOWN) == "UNKNOWN"
    assert type(UNKNOWN)() is not None


# -- values that are known ------------------------------------------------------------

KNOWN = [
    # gunicorn's documented example, and the ways of spelling cpu_count()
    ("import multiprocessing\nworkers = multiprocessing.cpu_count() * 2 + 1", {}, {"workers": 9}),
    ("from multiprocessing import cpu_count\nworkers = cpu_count() + 1", {}, {"workers": 5}),
    ("import multiprocessing as mp\nworkers = mp.cpu_count() * 2", {}, {"workers": 8}),
    ("from multiprocessing import cpu_count as n\nworkers = n()", {}, {"workers": 4}),
    ("import os\nworkers = os.cpu_count()", {}, {"workers": 4}),
    ("import os.path\nworkers = os.cpu_count()", {}, {"workers": 4}),
    ("from os import cpu_count\nworkers = cpu_count() // 2", {}, {"workers": 2}),
    ("import os\nworkers = len(os.sched_getaffinity(0))", {"affinity": 6}, {"workers": 6}),
    ("import os\ncpus = os.sched_getaffinity(0)\nworkers = len(cpus) * 2",
     {"affinity": 3}, {"workers": 6}),
    ("import os\nworkers = max(2, min(os.cpu_count(), 8))", {"cpu_count": 64}, {"workers": 8}),
    # environment reads
    ('import os\nworkers = int(os.environ.get("WEB_CONCURRENCY", 2))', {}, {"workers": 2}),
    ('import os\nworkers = int(os.environ.get("WEB_CONCURRENCY", 2))',
     {"environ": {"WEB_CONCURRENCY": "5"}}, {"workers": 5}),
    ('import os\nthreads = int(os.getenv("THREADS", "4"))', {}, {"threads": 4}),
    ('import os\nthreads = int(os.getenv("THREADS", default="4"))',
     {"environ": {"THREADS": " 8\n"}}, {"threads": 8}),
    ('from os import environ, getenv\ntimeout = int(environ.get("T", 30)) + int(getenv("K", 1))',
     {"environ": {"K": "2"}}, {"timeout": 32}),
    ('import os\nproc_name = os.environ["APP"]', {"environ": {"APP": "shop"}},
     {"proc_name": "shop"}),
    ('import os\nbind = os.environ.get("BIND") or "127.0.0.1:8000"', {},
     {"bind": "127.0.0.1:8000"}),
    ('import os\nreuse_port = "PORT" in os.environ', {"environ": {"PORT": "1"}},
     {"reuse_port": True}),
    ("import os\nbind = f\"0.0.0.0:{os.environ.get('PORT', '8000')}\"", {},
     {"bind": "0.0.0.0:8000"}),
    ("import os\nbind = [f\"0.0.0.0:{os.environ.get('PORT', '8000')}\"]",
     {"environ": {"PORT": "9000"}}, {"bind": ["0.0.0.0:9000"]}),
    # names, statements
    ("import os\ncores = os.cpu_count()\nworkers = cores * 2\nthreads = cores",
     {}, {"workers": 8, "threads": 4}),
    ("workers = 2\nworkers += 1\ntimeout = 10\ntimeout *= 3", {}, {"workers": 3, "timeout": 30}),
    ('bind = ["a"]\nbind += ["b"]', {}, {"bind": ["a", "b"]}),
    ("workers = 2\nworkers = 5", {}, {"workers": 5}),
    ("workers = threads = 3", {}, {"workers": 3, "threads": 3}),
    ("workers, threads = 2, 4", {}, {"workers": 2, "threads": 4}),
    ("cores = 4\nworkers = cores", {}, {"workers": 4}),  # `cores` is not a setting
    ('"""docstring"""\nimport sys\nprint("loading")\nworkers = 2', {}, {"workers": 2}),
    # if / elif / else
    ('import os\nif os.environ.get("ENV") == "prod":\n    workers = 8\nelse:\n    workers = 2',
     {"environ": {"ENV": "prod"}}, {"workers": 8}),
    ('import os\nif os.environ.get("ENV") == "prod":\n    workers = 8\nelse:\n    workers = 2',
     {}, {"workers": 2}),
    ('import os\nenv = os.getenv("ENV", "dev")\nif env == "prod":\n    workers = 8\n'
     'elif env == "staging":\n    workers = 4\nelse:\n    workers = 1',
     {"environ": {"ENV": "staging"}}, {"workers": 4}),
    ('import os\nif os.environ.get("X"):\n    timeout = 30\nelse:\n    timeout = 30',
     {"environ": None}, {"timeout": 30}),  # unknown test, the same value either way
    # expressions
    ("timeout = 60 if 2 > 1 else 30\nkeepalive = not 0\nbacklog = -(-2048)", {},
     {"timeout": 60, "keepalive": True, "backlog": 2048}),
    ("x = None\ntimeout = x is None and 10 or 20\nkeepalive = x is not None", {},
     {"timeout": 10, "keepalive": False}),
    ("timeout = 1 < 2 < 3\nkeepalive = 3 < 2 < 'a'\nbacklog = 2 in [1, 2]", {},
     {"timeout": True, "keepalive": False, "backlog": True}),
    ("timeout = 7 / 2\nkeepalive = 7 % 3\nbacklog = 2 ** 11\nmax_requests = 10 - 0.5", {},
     {"timeout": 3.5, "keepalive": 1, "backlog": 2048, "max_requests": 9.5}),
    ('proc_name = "app" + "-" * 3 + str(2)\nbind = ["a"] * 2 + ["b"]', {},
     {"proc_name": "app---2", "bind": ["a", "a", "b"]}),
    ('workers = int("ff", 16) + int(2.9) + round(2.6) + abs(-3) + len("abc")', {},
     {"workers": 255 + 2 + 3 + 3 + 3}),
    ('timeout = float("1.5")\nkeepalive = bool("")\nbacklog = round(2.345, 2)', {},
     {"timeout": 1.5, "keepalive": False, "backlog": 2.35}),
    ("workers = 3\nproc_name = f'app-{workers:03d}-{workers!r}-{None}'", {},
     {"workers": 3, "proc_name": "app-003-3-None"}),
    ("bind = ('a', 'b')\nproc_name = f'{bind}'", {},
     {"bind": ("a", "b"), "proc_name": "('a', 'b')"}),
    # literal-only files give what the old literal reader gave
    ("workers = 3", {}, {"workers": 3}),
    ('bind = ["a", "b"]', {}, {"bind": ["a", "b"]}),
    ("timeout: int = 45", {}, {"timeout": 45}),
    ('worker_class = "gthread"', {}, {"worker_class": "gthread"}),
    ("worker_tmp_dir = None\nreuse_port = True", {}, {"worker_tmp_dir": None, "reuse_port": True}),
]


@pytest.mark.parametrize("text,kwargs,expected", KNOWN)
def test_known_values(text, kwargs, expected):
    result = run(text, **kwargs)
    assert result.complete
    assert result.values == expected
    assert {k: type(v) for k, v in result.values.items()} == \
        {k: type(v) for k, v in expected.items()}  # 9, not 9.0 or True
    assert result.unknown == set()


# -- values that are not known --------------------------------------------------------

UNKNOWN_CASES = [
    ("import multiprocessing\nworkers = multiprocessing.cpu_count() * 2 + 1",
     {"cpu_count": None}, "workers"),
    ("import os\nworkers = len(os.sched_getaffinity(0))", {"affinity": None}, "workers"),
    ("import os\nworkers = len(os.sched_getaffinity(1))", {}, "workers"),
    ('import os\nworkers = int(os.environ.get("WEB_CONCURRENCY", 2))', {"environ": None},
     "workers"),
    ('import os\nworkers = int(os.getenv("W", "2"))', {"environ": None}, "workers"),
    ('import os\nproc_name = os.environ["APP"]', {}, "proc_name"),  # gunicorn would fail
    ('import os\nworkers = int(os.environ.get("W", "many"))', {}, "workers"),
    ('import os\nif os.environ.get("ENV") == "prod":\n    workers = 8\nelse:\n    workers = 2',
     {"environ": None}, "workers"),
    ("import os\nif os.environ.get('X'):\n    workers = 8", {"environ": None}, "workers"),
    # names changed by code that is not followed
    ("def hook(server):\n    pass\nworkers = 2\nfor workers in range(3):\n    pass", {}, "workers"),
    ("try:\n    workers = 4\nexcept Exception:\n    workers = 1", {}, "workers"),
    ("with open('x') as f:\n    timeout = 3", {}, "timeout"),
    ("while False:\n    timeout = 3", {}, "timeout"),
    ("class C:\n    pass\nworkers = 2\nclass workers:\n    pass", {}, "workers"),
    ("match 1:\n    case timeout:\n        pass", {}, "timeout"),
    ("try:\n    import workers\nexcept ImportError as timeout:\n    pass", {}, "timeout"),
    ("workers = 2\ndel workers", {}, "workers"),
    ("x = [(workers := 3)]", {}, "workers"),
    ("workers = 2\nfrom somewhere import *", {}, "workers"),
    ("import workers", {}, "workers"),
    ("from .local import workers", {}, "workers"),
    ("workers, threads = get()", {}, "workers"),
    # lists mutated by calls, os.environ changed by the file
    ('bind = ["a"]\nbind.append("b")', {}, "bind"),
    ('bind = ["a"]\nbind[0] = "b"', {}, "bind"),
    ('addresses = ["a"]\nbind = addresses\nextend_list(addresses)', {}, "bind"),
    ('addresses = ["a"]\nbind = addresses\naddresses += ["b"]', {}, "bind"),
    ('def add(address):\n    bind.append(address)\nbind = ["a"]\nadd("b")', {}, "bind"),
    ('def setup():\n    global workers\n    workers = 8\nworkers = 2\nsetup()', {}, "workers"),
    ('import os\nos.environ["W"] = "3"\nworkers = int(os.environ["W"])', {}, "workers"),
    ('import os\nos.environ.setdefault("W", "3")\nworkers = int(os.environ.get("W", 1))',
     {}, "workers"),
    ('import os\nos.environ.update(W="3")\nworkers = int(os.environ.get("W", 1))', {}, "workers"),
    ('import os\nchange(os.environ)\nworkers = int(os.getenv("W", 1))', {}, "workers"),
    # expressions outside the subset
    ("workers = (lambda: 1)()", {}, "workers"),
    ('worker_tmp_dir = open("/etc/shadow").read()', {}, "worker_tmp_dir"),
    ('proc_name = b"app"', {}, "proc_name"),
    ('proc_name = "app".upper()', {}, "proc_name"),
    ('bind = {"a": 1}', {}, "bind"),
    ("bind = [x for x in 'ab']", {}, "bind"),
    ("workers = [1, 2][0]", {}, "workers"),
    ("workers = unknown_name + 1", {}, "workers"),
    ('workers = int("abc")', {}, "workers"),
    ("workers = 1 / 0", {}, "workers"),
    ("workers = 2 ** 0.5", {}, "workers"),
    ("workers = 2 ** -1", {}, "workers"),
    ("workers = 1j", {}, "workers"),
    ('workers = "a" < 1', {}, "workers"),
    ("workers = int(x=1)", {}, "workers"),
    ("workers = min([])", {}, "workers"),
    ("def int(x):\n    return 99\nworkers = int('2')", {}, "workers"),
]


@pytest.mark.parametrize("text,kwargs,name", UNKNOWN_CASES)
def test_unknown_values(text, kwargs, name):
    result = run(text, **kwargs)
    assert result.complete
    assert name in result.unknown
    assert name not in result.values
    assert any(name in p for p in result.problems)


def test_a_name_assigned_inside_a_function_is_unknown():
    result = run("workers = 2\ndef setup():\n    workers = 4\n")
    assert result.unknown == {"workers"}


def test_a_name_never_assigned_is_in_neither():
    result = run("workers = 2\ntimeout = workers * some_name")
    assert result.values == {"workers": 2}
    assert result.unknown == {"timeout"}
    assert "threads" not in result.values and "threads" not in result.unknown


def test_only_the_requested_names_are_reported():
    result = run("cores = 4\nworkers = cores\nhelper = open", names=["workers"])
    assert result.values == {"workers": 4} and result.unknown == set()


def test_missing_environment_variable_is_a_problem():
    result = run('import os\nproc_name = os.environ["' + "A" * 1000 + '"]')
    assert result.unknown == {"proc_name"}
    assert any("is not set" in p for p in result.problems)
    assert all("A" * 61 not in p for p in result.problems)  # file content is clipped


def test_environment_not_known_after_a_write_only_for_that_key():
    result = run('import os\nos.environ["A"] = "1"\ntimeout = int(os.getenv("B", "5"))\n'
                 'workers = int(os.environ.get("A", 2))')
    assert result.values == {"timeout": 5} and result.unknown == {"workers"}


def test_unknown_test_keeps_a_value_both_branches_agree_on():
    text = ('import os\nworkers = 2\nif os.environ.get("X"):\n    timeout = 1\n'
            'else:\n    timeout = 2\nthreads = workers')
    result = run(text, environ=None)
    assert result.values == {"workers": 2, "threads": 2}
    assert result.unknown == {"timeout"}


def test_never_executes_anything(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    text = ('workers = __import__("os").system("id")\n__import__("os").system("id")\n'
            'timeout = eval("1")\n')
    result = run(text)
    assert calls == []
    assert not result.complete  # eval: the file may rewrite its own variables
    result = run('workers = __import__("os").system("id")\n__import__("os").system("id")')
    assert calls == [] and result.unknown == {"workers"}


@pytest.mark.parametrize("text", [
    "globals()['workers'] = 8",
    "exec('workers = 8')",
    "import sys\nsetattr(sys.modules[__name__], 'workers', 8)",
    "vars().update(workers=8)",
])
def test_files_that_rewrite_their_own_namespace_are_not_analysed(text):
    result = run(text)
    assert not result.complete and result.values == {} and result.problems


# -- bounds: hostile files ------------------------------------------------------------

def not_known(result: ConfigResult, name: str) -> bool:
    return name not in result.values and (not result.complete or name in result.unknown)


HOSTILE = [
    ("timeout = " + "+".join(["1"] * 50_000), "timeout"),  # 100 kB expression
    ("timeout = 1e999", "timeout"),
    ("timeout = 10**10**10", "timeout"),
    ("timeout = 2 ** 64 ** 64", "timeout"),
    ("timeout = 9 ** 64", "timeout"),
    ("timeout = 10 ** 16", "timeout"),
    ("timeout = " + "9" * 4000, "timeout"),
    ("timeout = 0x" + "f" * 20_000, "timeout"),
    ('timeout = float("inf")', "timeout"),
    ('proc_name = "x" * 4194304', "proc_name"),
    ('proc_name = "x" * 10**15 * 10**15', "proc_name"),
    ('proc_name = "x" * 4096 + "y"', "proc_name"),
    ('proc_name = f"{1:>9999}"', "proc_name"),
    ('proc_name = f"{1.5:.999}"', "proc_name"),
    ('bind = ["a"] * 10**9', "bind"),
    ("bind = [[1] * 200] * 200", "bind"),
    ("bind = [" + "1, " * 300 + "]", "bind"),
    ("bind = [[]]\n" + "bind = [bind, bind]\n" * 100, "bind"),  # 2**100 items if flattened
    ("workers = " + "(1 + " * 200 + "1" + ")" * 200, "workers"),
    ("workers = " + "int(" * 200 + "1" + ")" * 200, "workers"),
    ("bind = " + "[" * 200 + "]" * 200, "bind"),
    ("workers = " + "-" * 5000 + "1", "workers"),
    ("workers = " + "not " * 100 + "1", "workers"),
    ('timeout = int("9" * 5000)', "timeout"),
    ('timeout = int("1" * 60)', "timeout"),
    ("workers = 1\n" + "# padding\n" * 31_000, "workers"),  # 300 KiB
    ("workers = 2\x00\n", "workers"),
    (b"workers = 2\n\xff\xfe = 3\nproc_name = '\xff'".decode("utf-8", "replace"), "workers"),
    ("workers = (lambda: 1)()", "workers"),
    ('workers = __import__("os").system("id")', "workers"),
    ('worker_tmp_dir = open("/etc/shadow").read()', "worker_tmp_dir"),
    ("workers = 0\n" + "workers = workers + 1\n" * 10_000, "workers"),
    ("workers = [" * 100 + "]" * 100, "workers"),
    ("if 1:\n" + "".join(" " * i + "if 1:\n" for i in range(1, 99)) + " " * 99 + "workers = 1",
     "workers"),
    ("workers = a" + ".b" * 30_000, "workers"),
    ("workers = f" + "()" * 30_000, "workers"),
    ("workers = 'a' 'b' " * 1000 + "\x0b", "workers"),
]


@pytest.mark.parametrize("text,name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_files_are_bounded(text, name):
    result = run(text)
    assert not_known(result, name)


def test_grouping_parentheses_do_not_nest_anything():
    assert run("workers = " + "(" * 200 + "1" + ")" * 200).values == {"workers": 1}


def test_a_deep_expression_is_unknown_but_the_rest_of_the_file_is_not():
    result = run("workers = " + "-" * 70 + "1\ntimeout = 5")
    assert result.complete and result.values == {"timeout": 5} and result.unknown == {"workers"}


def test_values_at_the_bounds_are_known():
    result = run('timeout = 10 ** 15\nbacklog = 2 ** 49\nproc_name = "x" * 4096\n'
                 'bind = ["a"] * 256\nkeepalive = -10 ** 15')
    assert result.values == {"timeout": 10**15, "backlog": 2**49, "proc_name": "x" * 4096,
                             "bind": ["a"] * 256, "keepalive": -10**15}


def test_many_steps_stop_the_evaluation():
    text = "\n".join(f"v{i} = {i}" for i in range(3000)) + "\nimport os\n"
    text += "if os.environ.get('X'):\n    workers = 1\n" * 40
    result = run(text, environ=None)
    assert not result.complete and result.values == {} and "steps" in result.problems[0]


def test_many_nodes_stop_the_analysis():
    result = run("workers = 0\n" + "workers = workers + 1\n" * 10_000)
    assert not result.complete and "syntax nodes" in result.problems[0]


def test_long_files_within_the_bounds_are_evaluated():
    result = run("workers = 0\n" + "workers = workers + 1\n" * 5_000)
    assert result.complete and result.values == {"workers": 5000}


def test_problems_are_capped():
    names = [f"s{i}" for i in range(40)]
    result = run("\n".join(f"s{i} = f()" for i in range(40)), names=names)
    assert result.unknown == set(names) and len(result.problems) == 20


def test_text_that_does_not_parse():
    result = run("workers = = 2")
    assert not result.complete and result.values == {} and "parse" in result.problems[0]


SAMPLES = [text for text, _, _ in KNOWN] + [text for text, _, _ in UNKNOWN_CASES]


@pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("seed", range(20))
def test_mangled_files_are_refused_exactly_when_python_cannot_parse_them(seed):
    """CPython's own parser is the oracle: a mangled sample it refuses is `complete=False`
    with no values and says it does not parse; one it accepts (small, no forbidden call)
    is analysed to the end. Neither ends in evaluate()'s catch-all for exceptions ("could
    not be evaluated"), which would hide a bug in the evaluator as a refused file."""
    rng = random.Random(seed)
    alphabet = "()[]{}:=+-*/%.,'\"\n 0123456789abcdefxyz_\\#@!<>~^&|"
    outcomes = set()
    for _ in range(50):
        chars = list(rng.choice(SAMPLES))
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(chars) + 1)
            if rng.random() < 0.5 and chars:
                del chars[min(i, len(chars) - 1)]
            else:
                chars.insert(i, rng.choice(alphabet))
        text = "".join(chars)
        result = run(text, environ=rng.choice([None, {}, {"PORT": "1"}]),
                     cpu_count=rng.choice([None, 0, 1, 4]), affinity=rng.choice([None, 2]))
        try:
            ast.parse(text)
            parses = True
        except (SyntaxError, ValueError):
            parses = False
        outcomes.add(parses)
        assert not any("could not be evaluated" in p for p in result.problems), (text, result)
        assert set(result.values) | result.unknown <= set(SETTINGS), (text, result)
        if parses:
            assert result.complete, (text, result.problems)
        else:
            assert not result.complete and result.values == {} and not result.unknown, text
            assert "does not parse" in result.problems[0], (text, result.problems)
    assert outcomes == {True, False}, "the mangling no longer makes both kinds of file"


def test_the_documented_bounds_are_the_enforced_ones():
    doc = " ".join(confeval.__doc__.split())
    assert f"text <= {MAX_TEXT // 1024} KiB" in doc
    assert f"<= {MAX_NODES:,} syntax nodes" in doc and f"<= {MAX_STEPS:,} evaluation steps" in doc
    # the text bound, at the byte: a file of exactly MAX_TEXT characters is evaluated,
    # one more is refused before it is parsed
    tail = "\nworkers = 3\n"
    at_bound = "#" * (MAX_TEXT - len(tail)) + tail
    assert len(at_bound) == MAX_TEXT
    assert run(at_bound).values == {"workers": 3}
    over = run(at_bound + " ")
    assert not over.complete and over.problems == [f"config file larger than {MAX_TEXT // 1024} KiB"]
