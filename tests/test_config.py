"""Flags, environment and config file: precedence, and exit 2 with one message on bad input
(the command line run in-process: tests/cli.py)."""

import subprocess
import sys

import pytest

from exporter.config import env_name, load
from tests.cli import run_cli


def run_program(*args, timeout=20):
    """`python -m exporter ARGS`, the real program (a process: its tests are slow)."""
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_defaults():
    cfg = load([], environ={})
    assert cfg.listen_addresses == (":10188",) and cfg.web_systemd_socket is False
    assert cfg.telemetry_path == "/metrics"
    assert cfg.collectors == {"gunicorn": True, "netstat": True, "oom": True, "logs": True,
                              "statsd": True, "sampler": True, "postgres": True, "advice": True,
                              "stacks": False}
    assert cfg.db_ports == (5432, 6432)


def test_precedence_flag_over_env_over_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[web]\nlisten-address = "127.0.0.1:1"\ntelemetry-path = "/m"\n'
                 '[log]\nlevel = "debug"\n[collector]\nnetstat = false\n'
                 '[gunicorn]\ndb-port = [5433]\n'
                 'app-name = [{match = "shop\\\\.wsgi", name = "shop"}]\n')
    env = {env_name("web.listen-address"): "127.0.0.1:2", env_name("config.file"): str(f)}
    cfg = load(["--web.listen-address", "[::1]:3"], environ=env)
    assert cfg.listen_addresses == ("[::1]:3",)
    assert cfg.telemetry_path == "/m"
    assert cfg.log_level == "debug"
    assert cfg.collectors["netstat"] is False
    assert cfg.db_ports == (5433,)
    assert cfg.app_names[0][1] == "shop" and cfg.app_names[0][0].search("shop.wsgi:app")
    cfg = load([], environ=env)
    assert cfg.listen_addresses == ("127.0.0.1:2",)


def test_listen_addresses_repeat_and_systemd_socket_is_a_switch(tmp_path):
    cfg = load(["--web.listen-address", "127.0.0.1:1", "--web.listen-address", "[::1]:1"],
               environ={})
    assert cfg.listen_addresses == ("127.0.0.1:1", "[::1]:1")
    assert load([], environ={env_name("web.listen-address"): "127.0.0.1:1,[::1]:2"}) \
        .listen_addresses == ("127.0.0.1:1", "[::1]:2")
    f = tmp_path / "c.toml"
    f.write_text('[web]\nlisten-address = ["127.0.0.1:1", ":2"]\nsystemd-socket = true\n')
    cfg = load(["--config.file", str(f)], environ={})
    assert cfg.listen_addresses == ("127.0.0.1:1", ":2") and cfg.web_systemd_socket is True
    assert load(["--web.systemd-socket"], environ={}).web_systemd_socket is True
    assert load(["--web.systemd-socket=false"], environ={}).web_systemd_socket is False
    assert load([], environ={env_name("web.systemd-socket"): "true"}).web_systemd_socket is True


def test_collector_flags_and_env():
    assert load(["--no-collector.netstat"], environ={}).collectors["netstat"] is False
    assert load([], environ={"GUNICORN_EXPORTER_COLLECTOR_NETSTAT": "false"}).collectors["netstat"] is False
    assert load(["--gunicorn.db-port", "1,2", "--gunicorn.db-port", "3"], environ={}).db_ports == (1, 2, 3)


@pytest.mark.parametrize("args,message", [
    (["--web.listen-address", "nonsense"], "is not HOST:PORT"),
    (["--web.listen-address", ":99999"], "is not HOST:PORT"),
    (["--log.level", "loud"], "is not one of debug"),
    (["--gunicorn.app-name", "(unclosed=x"], "not a valid regular expression"),
    (["--gunicorn.db-port", "http"], "is not a port number"),
    (["--scrape.timeout", "soon"], "is not a duration"),
    (["--gunicorn.worker-series", "some"], "'some' is not one of all, none"),
    (["--gunicorn.remember-after=-1s"], "remember-after: '-1s' is not a duration"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--config.file", "/nonexistent/x.toml"], "cannot read config file"),
    (["--requests.route", r"user=(a)\1"], "RE2 accepts"),
    (["--requests.route", "other=^/x"], "not 'other'"),
    (["--requests.route", "a=^/a", "--requests.route", "b=^/b", "--requests.max-routes", "1"],
     "at most --requests.max-routes (1)"),
    (["--requests.route-file", "/nonexistent/routes"], "route file /nonexistent/routes"),
    (["--logs.access-format", '"%(a)s" %(s)s "%(f)s"'], "could shift"),
])
def test_bad_flags_exit_2_with_one_message(args, message):
    r = run_cli(*args)
    assert r.returncode == 2, r
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gunicorn-exporter: error:")


def test_bad_config_file_exit_2(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[web\n")
    r = run_cli("--config.file", str(f))
    assert r.returncode == 2 and "is not valid TOML" in r.stderr and "Traceback" not in r.stderr
    f.write_text('[web]\nlisten-adress = ":1"\n')
    r = run_cli("--config.file", str(f))
    assert r.returncode == 2 and "unknown setting 'web.listen-adress'" in r.stderr
    f.write_text('[collector]\nnope = true\n')
    r = run_cli("--config.file", str(f))
    assert r.returncode == 2 and "unknown collector 'nope'" in r.stderr


def test_help_lists_collector_flags():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--web.listen-address", "--web.telemetry-path", "--collector.gunicorn",
                 "--no-collector.gunicorn", "--log.level", "--config.file"):
        assert flag in r.stdout
    text = " ".join(r.stdout.split())     # the epilog is wrapped
    assert "gunicorn-exporter doctor" in text and "gunicorn-exporter demo" in text


@pytest.mark.slow
def test_doctor_help_offers_only_what_the_doctor_uses():
    r = run_program("doctor", "--help")
    assert r.returncode == 0, r.stderr
    assert "--gunicorn.user" in r.stdout and "--postgres.dsn" in r.stdout and "--format" in r.stdout
    for flag in ("--web.", "--collector.", "--sampler.", "--statsd.", "--logs.", "--oom."):
        assert flag not in r.stdout, flag
    # still accepted: one config file or environment serves the daemon and the doctor
    # (the doctor then runs, on a proc root of its own: a process of its own)
    r = run_program("doctor", "--web.listen-address", ":1", "--no-collector.oom", "--path.procfs",
                    "/nonexistent")
    assert "unrecognized" not in r.stderr, r.stderr


def test_configuration_doc_lists_every_setting_and_collector():
    from pathlib import Path

    from exporter.config import COLLECTORS, SETTINGS
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = [f"--{k}" for k in SETTINGS if f"`--{k}" not in doc]
    missing += [f"--[no-]collector.{n}" for n in COLLECTORS if f"`--[no-]collector.{n}`" not in doc]
    missing += [env_name(k) for k in SETTINGS if env_name(k) not in doc]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_every_problem_is_reported_at_once(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[web]\nlisten-adress = ":1"\n')
    r = run_cli("--log.level", "loud", "--scrape.timeout", "soon", "--no-such-flag",
                "--config.file", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("gunicorn-exporter: error:")
    for message in ("is not one of debug", "is not a duration", "unrecognized arguments: --no-such-flag",
                    "unknown setting 'web.listen-adress'"):
        assert message in last, (message, last)


def test_a_malformed_dsn_in_a_dsn_file_is_one_message_and_exit_2(tmp_path):
    f = tmp_path / "dsns"
    f.write_text("# comment\npostgresql://u:s3cret@db/x?sslmode=bogus=\nhost=db port=notaport\n")
    r = run_cli("--postgres.dsn-file", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "postgres.dsn-file" in r.stderr and "s3cret" not in r.stderr


def test_defaults_are_declared_once():
    from exporter.collectors.gunicorn import GunicornOptions
    from exporter.collectors.postgres import PostgresOptions
    from exporter.options import DEFAULTS
    cfg = load([], environ={})
    assert GunicornOptions().db_ports == cfg.db_ports == DEFAULTS["gunicorn.db-port"]
    assert PostgresOptions().timeout == cfg.postgres_timeout == DEFAULTS["postgres.timeout"]
    assert cfg.gunicorn_options().control_timeout == GunicornOptions().control_timeout


def test_worker_series_and_what_is_remembered():
    cfg = load([], environ={})
    assert cfg.worker_series == "all"
    assert (cfg.remember_after, cfg.forget_after) == (60.0, 3600.0)
    cfg = load(["--gunicorn.worker-series", "NONE", "--gunicorn.forget-after", "0"], environ={})
    assert cfg.worker_series == "none" and cfg.forget_after == 0.0
    assert load([], environ={env_name("gunicorn.worker-series"): "none"}).worker_series == "none"
    options = load(["--gunicorn.remember-after", "5s"], environ={}).gunicorn_options()
    assert (options.remember_after, options.forget_after) == (5.0, 3600.0)


def test_apps_are_forgotten_after_the_app_vanished_window():
    """--gunicorn.forget-after defaults to the window of GunicornAppVanished: an app
    forgotten earlier would fire that alert (its last gunicorn_up 1 still in the
    window, no series now); later, GunicornDown pages for longer than that alert looks
    back. And an app is remembered after as many 15 s scrapes as the alert asks of it."""
    from exporter.options import DEFAULTS
    from generate.rules import load_config, parse_duration
    vanished = load_config()["GunicornAppVanished"]
    assert DEFAULTS["gunicorn.forget-after"] == parse_duration(vanished["window"])
    assert DEFAULTS["gunicorn.remember-after"] == vanished["min_samples"] * 15
