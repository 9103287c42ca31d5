"""The query client: long ranges split, retries, and clear errors for every failure."""

from __future__ import annotations

import gzip
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from accounting.prometheus import (
    PartialDataError,
    PrometheusClient,
    PrometheusQueryError,
    PrometheusUnreachable,
)
from tests.realservices import Prometheus, free_port

OK = {"status": "success", "data": {"resultType": "vector", "result": []}}


@contextmanager
def frontend(*responses: tuple[int, dict | str]) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server playing a Thanos or Mimir query frontend (neither installs here):
    it answers the given responses in turn, the last one repeating."""
    seen: list[dict] = []
    queue = list(responses)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            encoding = self.headers.get("Accept-Encoding", "")
            seen.append(
                {"path": self.path, "body": self.rfile.read(length).decode(), "accept": encoding}
            )
            code, body = queue.pop(0) if len(queue) > 1 else queue[0]
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            if "gzip" in encoding:  # as Prometheus does when asked
                data = gzip.compress(data)
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_warnings_from_a_query_frontend_are_partial_data():
    partial = {**OK, "warnings": ["store gateway 10.0.0.7:10901 did not answer"]}
    with frontend((200, partial)) as (url, _):
        with pytest.raises(PartialDataError, match="10.0.0.7:10901.*nothing was written"):
            PrometheusClient(url).query("up", 0)
        assert PrometheusClient(url, allow_partial=True).query("up", 0) == []


def test_victoriametrics_is_partial_is_partial_data():
    with (
        frontend((200, {**OK, "isPartial": True})) as (url, _),
        pytest.raises(PartialDataError, match="isPartial"),
    ):
        PrometheusClient(url).query("up", 0)


def test_server_errors_are_retried_then_reported():
    with frontend((503, "overloaded"), (200, OK)) as (url, seen):
        client = PrometheusClient(url, retries=2, backoff=0.01)
        assert client.query("up", 0) == []
        assert client.stats.retries == 1 and len(seen) == 2
    with (
        frontend((502, "bad gateway")) as (url, seen),
        pytest.raises(PrometheusUnreachable, match="HTTP 502.*after 3 tries"),
    ):
        PrometheusClient(url, retries=2, backoff=0.01).query("up", 0)


def test_rejected_queries_and_non_prometheus_answers_say_so():
    bad = {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}
    with (
        frontend((400, bad)) as (url, _),
        pytest.raises(
            PrometheusQueryError, match=r"rejected the query 'sum\(\(': bad_data: parse error"
        ),
    ):
        PrometheusClient(url).query("sum((", 0)
    with (
        frontend((200, "<html>login</html>")) as (url, _),
        pytest.raises(PrometheusQueryError, match="Prometheus-compatible API"),
    ):
        PrometheusClient(url).query("up", 0)


def test_series_columns_decode_values_and_fail_like_the_plain_call():
    matrix = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {"pod": "a"}, "values": [[3600, "1.5"], [7200, "NaN"]]},
                {"metric": {"pod": "b"}, "values": [[3600, "+Inf"]]},
            ],
        },
        "stats": {"ignored": True},  # fields the client does not know are skipped
    }
    with frontend((200, matrix)) as (url, _):
        got = PrometheusClient(url).call_series("query_range", {"query": "x"})
    assert got.labels == [{"pod": "a"}, {"pod": "b"}]
    assert got.counts.tolist() == [2, 1] and got.times.tolist() == [3600, 7200, 3600]
    assert got.values[0] == 1.5 and math.isnan(got.values[1]) and math.isinf(got.values[2])
    vector = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [10, "2"]}]},
    }
    with frontend((200, vector)) as (url, _):
        got = PrometheusClient(url).call_series("query", {"query": "x"})
    assert got.counts.tolist() == [1] and got.values.tolist() == [2.0]

    # The same errors as every other request: partial data, rejection, not JSON, and
    # an answer that is not a vector or matrix.
    cases = [
        ((200, {**OK, "warnings": ["store did not answer"]}), PartialDataError, "store did"),
        ((200, {**OK, "isPartial": True}), PartialDataError, "isPartial"),
        (
            (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
            PrometheusQueryError,
            "rejected the query 'x': bad_data: parse error",
        ),
        ((200, "<html>login</html>"), PrometheusQueryError, "Prometheus-compatible API"),
        (
            (200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}),
            PrometheusQueryError,
            "unexpected shape",
        ),
        (
            (200, {"status": "success", "data": {"resultType": "string", "result": []}}),
            PrometheusQueryError,
            "unexpected result type 'string'",
        ),
    ]
    for response, error, message in cases:
        with frontend(response) as (url, _), pytest.raises(error, match=message):
            PrometheusClient(url).call_series("query", {"query": "x"})


def test_series_columns_read_every_number_as_float_reads_it():
    # numpy reads the points' text in one pass: the same doubles as float() of each.
    texts = ["0.1", "-0", "NaN", "+Inf", "-Inf", "1e-300", "5e-324", "123456789012345.678"]
    texts += ["1.7976931348623157e+308", "2.220446049250313e-16", "3600", "-42.5"]
    times = [1_700_000_000 + i * 0.125 for i in range(len(texts))]
    points = [list(point) for point in zip(times, texts, strict=True)]
    matrix = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {"pod": "a"}, "values": points[:5]},
                {"metric": {}, "values": []},
                {"metric": {"pod": "b"}, "values": points[5:]},
            ],
        },
    }
    with frontend((200, matrix)) as (url, _):
        got = PrometheusClient(url).call_series("query_range", {"query": "x"})
    assert got.counts.tolist() == [5, 0, len(texts) - 5]
    assert got.times.tolist() == times
    expected = [float(v) for v in texts]
    assert [repr(v) for v in got.values.tolist()] == [repr(v) for v in expected]

    vector = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"pod": "a", "namespace": "n"}, "value": [1_700_000_000.5, "1.5"]},
                {"metric": {"pod": "b"}, "value": [1_700_000_000.5, "NaN"]},
            ],
        },
    }
    with frontend((200, vector)) as (url, _):
        fast, plain = (
            PrometheusClient(url).query_vector("x", 1),
            PrometheusClient(url).query("x", 1),
        )
    assert [(s.labels, repr(s.points)) for s in fast] == [(s.labels, repr(s.points)) for s in plain]

    valueless = {"status": "success", "data": {"resultType": "vector", "result": [{}]}}
    with frontend((200, valueless)) as (url, _), pytest.raises(PrometheusQueryError, match="one"):
        PrometheusClient(url).query_vector("x", 1)
    broken = {**matrix, "data": {"resultType": "matrix", "result": [{"values": [[1, "a b"]]}]}}
    with frontend((200, broken)) as (url, _), pytest.raises(PrometheusQueryError, match="shape"):
        PrometheusClient(url).call_series("query_range", {"query": "x"})


def test_answers_come_uncompressed_unless_compression_is_asked_for():
    # Prometheus gzips answers when asked: on a cluster's network that costs it more
    # CPU than it saves (a month is hundreds of MB of JSON).
    vector = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {"pod": "a"}, "value": [1, "2"]}]},
    }
    with frontend((200, vector)) as (url, seen):
        plain = PrometheusClient(url).query("x", 1)
        compressed = PrometheusClient(url, compression=True).query("x", 1)
        kept = PrometheusClient(url, headers={"Accept-Encoding": "gzip"}).query("x", 1)
    assert plain == compressed == kept
    assert [request["accept"] for request in seen] == ["identity", "gzip, deflate", "gzip"]


def test_an_unreachable_server_names_the_url_and_the_option():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnreachable, match=rf"{url}.*connection refused.*--prometheus"):
        PrometheusClient(url, retries=1, backoff=0.01).query("up", 0)
    with pytest.raises(PrometheusUnreachable, match="http\\(s\\) URL"):
        PrometheusClient("prometheus:9090")


@pytest.mark.integration
def test_long_ranges_are_split_into_ranges_prometheus_accepts(tmp_path):
    with Prometheus(tmp_path) as prom:
        client = PrometheusClient(prom.url)
        # 4 hours at a 1 s step: 14,401 points, over Prometheus's 11,000 per series.
        series = client.query_range("vector(1)", 1_700_000_000, 1_700_014_400, 1)
        assert client.stats.requests == 2
    assert len(series) == 1
    times = [t for t, _ in series[0].points]
    assert times == [1_700_000_000 + i for i in range(14_401)]
