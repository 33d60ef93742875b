"""Requests for every worker class, and the time each waited in the queue (docs/requests.md).

Real gunicorn masters, a real nginx, a real exporter; the oracles are the statuses and
times the clients measured on their own clock, and the servers' own log files.

* A UvicornWorker app (FastAPI's usual deployment), its access log configured as
  docs/requests.md says: requests by status from gunicorn's access log (uvicorn's format
  has no duration), and with latency from nginx's access log in the `nginx-upstream`
  format, attributed to the app by the upstream address nginx wrote.
* One sync worker behind nginx, which sets `X-Request-Start: t=${msec}`, and five
  simultaneous 1 s requests: each waits for the ones before it, so the queue times are
  about 0, 1, 2, 3 and 4 s, and each client saw its own (its round trip minus 1 s).
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest
from prometheus_client.utils import floatToGoString

from tests.conftest import require
from tests.exposition import scrape, select, value
from tests.harness.clients import http_get
from tests.harness.procs import poll, unique_name
from tests.harness.servers import running_exporter, running_nginx

EXPORTER_ARGS = ("--no-collector.postgres", "--no-collector.statsd", "--logs.poll-interval", "1s")


def _requests(series, app, source="access_log", **labels):
    return {dict(k)["status"]: v for k, v in
            select(series, "gunicorn_requests_total", app=app, source=source, **labels).items()}


def _nginx_required():
    require(os.geteuid() == 0, "nginx runs as root in these tests")
    require(os.path.exists("/usr/sbin/nginx") or bool(os.environ.get("PATH")) and
            any(os.path.exists(os.path.join(d, "nginx")) for d in os.environ["PATH"].split(":")),
            "nginx is not installed (apt-get install -y nginx-light)")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_uvicorn_worker_requests_from_its_access_log_and_latency_from_nginx(gunicorn_factory, tmp_path):
    _nginx_required()
    access = tmp_path / "access.log"
    g = gunicorn_factory(worker_class="uvicorn_worker.UvicornWorker", app="asgi_app:app", workers=1,
                         bind="unix", name=unique_name("fastapi"),
                         extra_args=["--access-logfile", str(access)])
    with running_nginx(tmp_path, f"unix:{g.unix_path}") as (port, nginx_access, _error), \
            running_exporter(tmp_path, "--logs.file", f"{g.name}={access}", *EXPORTER_ARGS) as direct, \
            running_exporter(tmp_path, "--logs.file", str(nginx_access), *EXPORTER_ARGS) as proxied:
        # the upstream address names the app once the gunicorn collector has seen it
        poll(lambda: value(scrape(proxied), "gunicorn_up", app=g.name) == 1, 30)
        elapsed = []
        for path, n in (("/", 10), ("/missing", 4), ("/slow?seconds=0.3", 3)):
            for _ in range(n):
                t0 = time.monotonic()
                status, _ = http_get(("127.0.0.1", port), path)
                elapsed.append((path, status, time.monotonic() - t0))
        assert [s for _, s, _ in elapsed] == [200] * 10 + [404] * 4 + [200] * 3
        want = {"200": 13, "404": 4}
        s1 = poll(lambda: (s := scrape(direct)) and _requests(s, g.name) == want and s, 20,
                  message="uvicorn's access log lines were not counted")
        assert value(s1, "gunicorn_log_access_unparsed_lines_total", file=str(access)) == 0
        # uvicorn's format has no duration: requests by status only
        assert value(s1, "gunicorn_request_duration_seconds_count", app=g.name, source="access_log") is None
        s2 = poll(lambda: (s := scrape(proxied)) and _requests(s, g.name, "proxy_log") == want and s, 20,
                  message="nginx's access log lines were not counted for the app")
        assert _requests(s2, "unknown", "proxy_log") == {} and _requests(s2, g.name) == {}
        count = value(s2, "gunicorn_request_duration_seconds_count", app=g.name, source="proxy_log")
        total = value(s2, "gunicorn_request_duration_seconds_sum", app=g.name, source="proxy_log")
        assert count == 17
        # nginx's $request_time lies between the app's sleeps and the clients' round trips
        assert 0.9 <= total <= sum(e for _, _, e in elapsed), total
        slow_le_025 = value(s2, "gunicorn_request_duration_seconds_bucket", app=g.name,
                            source="proxy_log", le=floatToGoString(0.25))
        assert slow_le_025 == 14


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_queue_time_of_five_simultaneous_requests_against_the_clients_clock(gunicorn_factory, tmp_path):
    _nginx_required()
    access = tmp_path / "access.log"
    g = gunicorn_factory(workers=1, bind="unix", name=unique_name("queue"), extra_args=[
        "--access-logfile", str(access), "--access-logformat",
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" "%({x-request-start}i)s" %(D)s'])
    with running_nginx(tmp_path, f"unix:{g.unix_path}",
                       location='proxy_set_header X-Request-Start "t=${msec}"; proxy_read_timeout 30s;') \
            as (port, _access, _error), \
            running_exporter(tmp_path, "--logs.file", f"{g.name}={access}", *EXPORTER_ARGS) as base:
        assert http_get(("127.0.0.1", port), "/")[0] == 200      # warm: nginx, the worker
        poll(lambda: _requests(scrape(base), g.name) == {"200": 1}, 20)

        def one(_):
            t0 = time.monotonic()
            status, _ = http_get(("127.0.0.1", port), "/slow?seconds=1", timeout=30)
            return status, time.monotonic() - t0
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            results = list(pool.map(one, range(5)))
        assert [s for s, _ in results] == [200] * 5
        # the client's own clock: each round trip is its queue time plus the 1 s request
        client_queue = sorted(e - 1.0 for _, e in results)
        s = poll(lambda: (s := scrape(base)) and value(
            s, "gunicorn_request_queue_seconds_count", app=g.name) == 6 and s, 20,
                 message="queue times not observed")
        total = value(s, "gunicorn_request_queue_seconds_sum", app=g.name)
        buckets = {le: value(s, "gunicorn_request_queue_seconds_bucket", app=g.name,
                             le=floatToGoString(le)) for le in (0.5, 2.5, 5.0)}
        assert value(s, "gunicorn_request_queue_clock_skew_total", app=g.name) == 0
        assert value(s, "gunicorn_request_queue_unmeasured_total", app=g.name) == 0
        # ~0, 1, 2, 3, 4 s (plus the warm-up request's ~0)
        assert buckets == {0.5: 2, 2.5: 4, 5.0: 6}, buckets
        assert total == pytest.approx(sum(client_queue), abs=0.25), (total, client_queue)
        print(f"\nqueue seconds: exporter sum {total:.4f}, clients {sum(client_queue):.4f} "
              f"({', '.join(f'{q:.3f}' for q in client_queue)})")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_routes_on_django_style_paths_through_a_real_exporter(gunicorn_factory, tmp_path):
    access = tmp_path / "access.log"
    routes = tmp_path / "routes"
    routes.write_text("# Django-style: ids in the path\n"
                      "user_orders=^/users/\\d+/orders/(\\d+/)?$\n"
                      "user=^/users/\\d+/$\n")
    g = gunicorn_factory(workers=1, bind="tcp", name=unique_name("django"), extra_args=[
        "--access-logfile", str(access), "--access-logformat",
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" "%({x-request-start}i)s" %(D)s'])
    with running_exporter(tmp_path, "--logs.file", f"{g.name}={access}", "--requests.route-file",
                          str(routes), "--requests.route", "status=^/status$", *EXPORTER_ARGS) as base:
        sent = {"user_orders": 0, "user": 0, "status": 0, "other": 0}
        for i in range(4):
            for path, route in ((f"/users/{i}/orders/", "user_orders"), (f"/users/{i}/orders/{i * 7}/", "user_orders"),
                                (f"/users/{i}/", "user"), ("/status?code=503", "status"),
                                (f"/users/{i}/orders/{i}/refund", "other")):
                status, _ = g.get(path)
                assert status in (404, 503), (path, status)
                sent[route] += 1
        want = {r: n for r, n in sent.items()}

        def counted():
            s = scrape(base)
            got = {dict(k)["route"]: v for k, v in select(
                s, "gunicorn_request_duration_seconds_count", app=g.name, source="access_log").items()}
            return s if got == want else None
        s = poll(counted, 20, message=f"routes not counted as {want}")
        assert _requests(s, g.name, route="status") == {"503": 4}
        assert _requests(s, g.name, route="user_orders") == {"404": 8}
        assert _requests(s, g.name, route="other") == {"404": 4}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_every_wsgi_class_counts_status_and_latency_from_gunicorns_access_log(
        gunicorn_factory, tmp_path, worker_class):
    access = tmp_path / "access.log"
    g = gunicorn_factory(worker_class=worker_class, workers=1, bind="tcp",
                         name=unique_name(f"cls-{worker_class}"), extra_args=[
                             "--access-logfile", str(access), "--access-logformat",
                             '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                             '"%({x-request-start}i)s" %(D)s'])
    with running_exporter(tmp_path, "--logs.file", f"{g.name}={access}", *EXPORTER_ARGS) as base:
        elapsed = []
        for code in (200, 200, 500, 404):
            t0 = time.monotonic()
            assert g.get(f"/status?code={code}&seconds=0.1")[0] == code
            elapsed.append(time.monotonic() - t0)
        s = poll(lambda: (s := scrape(base)) and _requests(s, g.name) == {"200": 2, "500": 1, "404": 1}
                 and s, 20, message=f"{worker_class}: requests not counted")
        total = value(s, "gunicorn_request_duration_seconds_sum", app=g.name, source="access_log")
        assert 0.4 <= total <= sum(elapsed), (total, elapsed)
