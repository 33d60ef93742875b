"""Static reading of gunicorn settings: argv shapes and titles (exporter/gunicorn/cmdline.py),
GUNICORN_CMD_ARGS, config files (exporter/gunicorn/settings.py)."""

from exporter.gunicorn.cmdline import gunicorn_args, parse_args, parse_title
from exporter.gunicorn.settings import normalise_worker_class, resolve


def test_recognises_invocations():
    assert gunicorn_args(["gunicorn", "-w", "4", "app:app"]) == ["-w", "4", "app:app"]
    assert gunicorn_args(["/srv/venv/bin/python3", "/srv/venv/bin/gunicorn", "app:app"]) == ["app:app"]
    assert gunicorn_args(["python3", "-m", "gunicorn", "-b", ":80", "app:app"]) == ["-b", ":80", "app:app"]
    assert gunicorn_args(["python3.11", "-u", "-X", "dev", "-mgunicorn", "x:y"]) == ["x:y"]
    assert gunicorn_args(["/usr/bin/python3", "-m", "gunicorn.app.wsgiapp", "x:y"]) == ["x:y"]
    assert gunicorn_args(["python3", "-m", "uvicorn", "x:y"]) is None
    assert gunicorn_args(["python3", "-c", "import gunicorn"]) is None
    assert gunicorn_args(["gunicorn-exporter"]) is None
    assert gunicorn_args(["nginx: master process"]) is None
    assert gunicorn_args([]) is None


def test_parse_args_forms():
    found, app = parse_args(["-w4", "--threads=8", "-k", "gthread", "-b", "unix:/run/a.sock",
                             "--bind=127.0.0.1:8000", "--reuse-port", "--preload",
                             "--access-logfile", "-", "--timeout", "60", "myproj.wsgi:application"])
    assert found == {"workers": "4", "threads": "8", "worker_class": "gthread",
                     "bind": ["unix:/run/a.sock", "127.0.0.1:8000"], "reuse_port": True,
                     "timeout": "60"}
    assert app == "myproj.wsgi:application"


def test_unknown_valued_option_does_not_eat_the_app():
    found, app = parse_args(["--log-level", "debug", "--statsd-host", "x:1", "m:app"])
    assert app == "m:app"


def test_titles():
    assert parse_title(["gunicorn: master [shop]"]) == ("master", "shop")
    assert parse_title(["gunicorn: worker [shop.2]"]) == ("worker", "shop.2")
    assert parse_title(["gunicorn: dirty-arbiter"]) == ("dirty-arbiter", None)
    assert parse_title(["gunicorn", "app:app"]) is None


def test_worker_class_aliases():
    assert normalise_worker_class("uvicorn.workers.UvicornWorker") == "uvicorn"
    assert normalise_worker_class("uvicorn_worker._workers.UvicornH11Worker") == "uvicorn"
    assert normalise_worker_class("egg:gunicorn#gevent") == "gevent"
    assert normalise_worker_class("gunicorn.workers.gthread.ThreadWorker") == "gthread"
    assert normalise_worker_class("my.custom.Worker") == "my.custom.Worker"


def test_config_file_is_evaluated_statically_never_run():
    text = (
        "import multiprocessing\n"
        "workers = multiprocessing.cpu_count() * 2 + 1\n"
        "worker_class = 'gevent'\n"
        "bind = ['unix:/run/x.sock']\n"
        "timeout: int = 120\n"
        "backlog = 64\n"
        "def on_starting(server):\n    raise SystemExit('must never run')\n"
    )
    s = resolve(["-c", "/g.py", "app:app"], {}, {"/g.py": text}.__getitem__, cpu_count=4)
    assert (s.get("workers"), s.get("worker_class"), s.get("bind"), s.get("timeout"),
            s.get("backlog")) == (9, "gevent", ["unix:/run/x.sock"], 120, 64)
    assert s.sources["workers"] == "config_file"
    unknown_cpus = resolve(["-c", "/g.py", "app:app"], {}, {"/g.py": text}.__getitem__)
    assert unknown_cpus.get("workers") is None and unknown_cpus.sources["workers"] == "unknown"
    broken = resolve(["-c", "/g.py", "-w", "3", "app:app"], {}, {"/g.py": "this is not python ("}.__getitem__)
    assert broken.get("timeout") is None and broken.sources["timeout"] == "unknown"
    assert broken.get("workers") == 3  # the command line still says


def test_precedence_defaults_file_env_cmdline():
    files = {"/etc/g.py": "workers = 3\ntimeout = 10\nthreads = 2\n"}
    s = resolve(["-c", "/etc/g.py", "--timeout", "90", "app:app"],
                {"GUNICORN_CMD_ARGS": "--timeout 50 --threads 4 -w 5"},
                read_file=files.__getitem__)
    assert s.get("timeout") == 90 and s.sources["timeout"] == "cmdline"
    assert s.get("threads") == 4 and s.sources["threads"] == "env"
    assert s.get("workers") == 5 and s.sources["workers"] == "env"
    assert s.get("keepalive") == 2 and s.sources["keepalive"] == "default"
    assert s.app_module == "app:app"


def test_missing_default_config_is_not_a_problem_but_explicit_one_is():
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory")
    assert resolve(["app:app"], {}, missing).problems == []
    assert resolve(["-c", "x.py", "app:app"], {}, missing).problems == [
        "config file x.py: No such file or directory"]


def test_bad_values_are_reported_not_raised():
    s = resolve(["-w", "many", "app:app"], {"GUNICORN_CMD_ARGS": "--timeout 'unclosed"})
    assert s.get("workers") is None and s.sources["workers"] == "unknown"
    assert any("workers" in p for p in s.problems)
    assert any("GUNICORN_CMD_ARGS" in p for p in s.problems)


def test_out_of_range_values_are_unknown_not_crashes():
    s = resolve(["-w", "9" * 400, "--timeout", "-5", "--threads", "0", "app:app"], {})
    for name in ("workers", "timeout", "threads"):
        assert s.get(name) is None and s.sources[name] == "unknown"
    s = resolve(["app:app"], {}, {"./gunicorn.conf.py": "timeout = 1e999\nworkers = 2.5\n"}.__getitem__)
    assert s.get("timeout") is None and s.get("workers") is None


def test_web_concurrency_and_port_are_gunicorns_defaults():
    s = resolve(["app:app"], {"WEB_CONCURRENCY": "4", "PORT": "9000"})
    assert (s.get("workers"), s.sources["workers"]) == (4, "env")
    assert s.get("bind") == ["0.0.0.0:9000"]
    s = resolve(["-w", "2", "app:app"], {"WEB_CONCURRENCY": "4"})
    assert s.get("workers") == 2


def test_what_cannot_be_read_is_unknown():
    # environment not readable: GUNICORN_CMD_ARGS could set anything not on the command line
    s = resolve(["-w", "2", "app:app"], None)
    assert s.get("workers") == 2 and s.get("timeout") is None and s.sources["timeout"] == "unknown"
    # argv replaced by a process title: nothing is known
    s = resolve(None, {})
    assert all(src == "unknown" for src in s.sources.values())

    def refused(path):
        raise PermissionError(13, "Permission denied")
    s = resolve(["-c", "/etc/secret.py", "-w", "2", "app:app"], {}, refused)
    assert s.get("workers") == 2 and s.get("proc_name") is None and s.sources["timeout"] == "unknown"


def test_app_from_env_only():
    assert resolve([], {"GUNICORN_CMD_ARGS": "-w 2 shop.wsgi:application"}).app_module == \
        "shop.wsgi:application"
    assert resolve([], {"GUNICORN_CMD_ARGS": "'unclosed"}).app_module is None
