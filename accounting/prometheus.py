"""A client for any Prometheus-compatible HTTP query API.

Prometheus, Thanos, Mimir and VictoriaMetrics answer `/api/v1/query` and
`/api/v1/query_range` alike. Long ranges are split so that no request asks for more
points per series than Prometheus allows (11,000). Transient failures (connection
errors, 429, 5xx) are retried with backoff. A partial answer (Prometheus or Thanos
`warnings`, VictoriaMetrics `isPartial`) is an error unless the caller allows it:
accounting must not charge from half the data.

The client counts the time spent waiting on the server, so tools can show it apart
from their own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import requests

MAX_POINTS_PER_SERIES = 11_000


class PrometheusError(RuntimeError):
    """Prometheus could not answer a query."""


class PrometheusUnreachable(PrometheusError):
    """No answer at all: wrong URL, server down, network."""


class PrometheusQueryError(PrometheusError):
    """Prometheus answered with an error for this query."""


class PartialDataError(PrometheusError):
    """Prometheus answered with only part of the data."""


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    seconds_waiting: float = 0.0
    bytes_received: int = 0


@dataclass
class Sample:
    """One series of a query result: its labels and its (time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)


class PrometheusClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
        allow_partial: bool = False,
        session: requests.Session | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise PrometheusUnreachable(
                f"--prometheus must be an http(s) URL such as http://prometheus:9090, got {url!r}"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.allow_partial = allow_partial
        self.session = session or requests.Session()
        if headers:
            self.session.headers.update(headers)
        self.stats = ClientStats()

    # ---------------------------------------------------------------- queries
    def query(self, promql: str, at: float) -> list[Sample]:
        """An instant query: one point per series."""
        data = self.call("query", {"query": promql, "time": _fmt(at)})
        return _samples(data, promql)

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[Sample]:
        """A range query from start to end (both included), split into pieces that
        Prometheus accepts, and joined back into one list of series."""
        if step <= 0 or end < start:
            raise ValueError(f"bad range: start={start} end={end} step={step}")
        span = step * (MAX_POINTS_PER_SERIES - 1)
        joined: dict[tuple[tuple[str, str], ...], Sample] = {}
        piece_start = start
        while piece_start <= end:
            piece_end = min(end, piece_start + span)
            data = self.call(
                "query_range",
                {
                    "query": promql,
                    "start": _fmt(piece_start),
                    "end": _fmt(piece_end),
                    "step": _fmt(step),
                },
            )
            for sample in _samples(data, promql):
                key = tuple(sorted(sample.labels.items()))
                if key in joined:
                    joined[key].points.extend(sample.points)
                else:
                    joined[key] = sample
            piece_start = piece_end + step
        return list(joined.values())

    # ---------------------------------------------------------------- transport
    def call(self, endpoint: str, params: dict[str, str]) -> dict[str, Any]:
        """One API request (`query`, `query_range`, ...) with retries; its `data`."""
        url = f"{self.url}/api/v1/{endpoint}"
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                # POST: long PromQL does not fit in a URL; every compatible API accepts it.
                response = self.session.post(url, data=params, timeout=self.timeout)
                failure: str | None = None
                if response.status_code == 429 or response.status_code >= 500:
                    failure = f"HTTP {response.status_code}: {response.text[:300]}"
            except requests.ConnectionError as error:
                response, failure = None, f"cannot connect: {_reason(error)}"
            except requests.Timeout:
                response, failure = None, f"no answer within {self.timeout:g}s"
            finally:
                self.stats.seconds_waiting += time.monotonic() - started
                self.stats.requests += 1
            if failure is None:
                break
            if attempt > self.retries:
                raise PrometheusUnreachable(
                    f"Prometheus at {self.url} did not answer ({failure}) after {attempt} "
                    "tries: check --prometheus and that the server is up"
                )
            self.stats.retries += 1
            time.sleep(self.backoff * 2 ** (attempt - 1))
        assert response is not None
        self.stats.bytes_received += len(response.content)
        try:
            payload = response.json()
        except ValueError:
            raise PrometheusQueryError(
                f"{url} answered HTTP {response.status_code} with no JSON: is {self.url} a "
                f"Prometheus-compatible API? Body: {response.text[:200]!r}"
            ) from None
        if payload.get("status") != "success":
            raise PrometheusQueryError(
                f"Prometheus at {self.url} rejected the query {params['query']!r}: "
                f"{payload.get('errorType', '')}: {payload.get('error', payload)}"
            )
        warnings = list(payload.get("warnings") or [])
        if payload.get("isPartial"):
            warnings.append("the answer is partial (isPartial: true)")
        if warnings and not self.allow_partial:
            raise PartialDataError(
                f"Prometheus at {self.url} returned partial data for {params['query']!r}: "
                f"{'; '.join(map(str, warnings))}. Retry when every store answers; nothing "
                "was written for this range"
            )
        return payload["data"]


def _reason(error: Exception) -> str:
    text = str(error)
    return "connection refused" if "refused" in text.lower() else text[:200]


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"not a finite time: {value}")
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _samples(data: dict[str, Any], promql: str) -> list[Sample]:
    kind = data.get("resultType")
    result = data.get("result") or []
    if kind == "vector":
        return [
            Sample(dict(r["metric"]), [(float(r["value"][0]), float(r["value"][1]))])
            for r in result
        ]
    if kind == "matrix":
        return [
            Sample(dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]])
            for r in result
        ]
    if kind == "scalar":
        return [Sample({}, [(float(result[0]), float(result[1]))])]
    raise PrometheusQueryError(f"unexpected result type {kind!r} for {promql!r}")
