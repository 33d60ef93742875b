"""Static reading of gunicorn settings: argv shapes, GUNICORN_CMD_ARGS, config files, titles."""

from exporter.gunicorn.settings import (gunicorn_args, normalise_worker_class, parse_args,
                                        parse_title, read_config_file, resolve)


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


def test_config_file_is_read_statically():
    text = (
        "import multiprocessing\n"
        "workers = multiprocessing.cpu_count() * 2 + 1\n"
        "worker_class = 'gevent'\n"
        "bind = ['unix:/run/x.sock']\n"
        "timeout: int = 120\n"
        "backlog = 64\n"
        "def on_starting(server):\n    raise SystemExit('must never run')\n"
    )
    found, skipped = read_config_file(text)
    assert found == {"worker_class": "gevent", "bind": ["unix:/run/x.sock"], "timeout": 120,
                     "backlog": 64}
    assert skipped == ["workers"]
    assert read_config_file("this is not python (")[1][0].startswith("config file does not parse")


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
    assert s.get("workers") == 1
    assert any("workers" in p for p in s.problems)
    assert any("GUNICORN_CMD_ARGS" in p for p in s.problems)


def test_app_from_env_only():
    assert resolve([], {"GUNICORN_CMD_ARGS": "-w 2 shop.wsgi:application"}).app_module == \
        "shop.wsgi:application"
    assert resolve([], {"GUNICORN_CMD_ARGS": "'unclosed"}).app_module is None
