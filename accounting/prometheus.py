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

import msgspec
import numpy as np
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
        compression: bool = False,
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
        if not compression:
            # A month's answers are hundreds of MB of JSON: gzip costs Prometheus more
            # CPU (about a tenth of its work for the month) than it saves on a network
            # inside a cluster. Worth it only across a slow link.
            self.session.headers["Accept-Encoding"] = "identity"
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

    # ---------------------------------------------------------------- requests
    def call(self, endpoint: str, params: dict[str, str]) -> dict[str, Any]:
        """One API request (`query`, `query_range`, ...) with retries; its `data`."""
        response = self._post(endpoint, params)
        try:
            payload = response.json()
        except ValueError:
            raise self._not_json(endpoint, response) from None
        self._check(
            params,
            payload.get("status"),
            f"{payload.get('errorType', '')}: {payload.get('error', payload)}",
            list(payload.get("warnings") or []),
            bool(payload.get("isPartial")),
        )
        return payload["data"]

    def call_series(self, endpoint: str, params: dict[str, str]) -> SeriesColumns:
        """A `query` or `query_range` request whose answer is a vector or matrix, as
        columns. Decoded straight into arrays (msgspec, typed): no Python dict or list
        per point, several times less CPU than `call` on answers of millions of points."""
        response = self._post(endpoint, params)
        try:
            payload = _SERIES_DECODER.decode(response.content)
        except msgspec.ValidationError as error:
            raise PrometheusQueryError(
                f"{self.url} answered {params['query']!r} with an unexpected shape ({error}); "
                "an instant or range vector was expected"
            ) from None
        except msgspec.DecodeError:
            raise self._not_json(endpoint, response) from None
        self._check(
            params,
            payload.status,
            f"{payload.errorType}: {payload.error}",
            list(payload.warnings),
            payload.isPartial,
        )
        data = payload.data
        if data is None or data.resultType not in ("matrix", "vector"):
            kind = None if data is None else data.resultType
            raise PrometheusQueryError(f"unexpected result type {kind!r} for {params['query']!r}")
        result = data.result
        # The points as the answer's text: [[t,"v"],...] per series of a matrix, [t,"v"]
        # per series of a vector. With brackets, quotes and commas made spaces, numpy
        # reads every number at once (NaN, +Inf and -Inf too): no Python object per point.
        if data.resultType == "vector":
            texts = [bytes(r.value) for r in result]
            counts = np.fromiter(map(bool, texts), dtype=np.int64, count=len(texts))
        else:
            texts = [bytes(r.values) for r in result]
            counts = np.fromiter(
                (text.count(b"[") - 1 for text in texts), dtype=np.int64, count=len(texts)
            )
        try:
            numbers = np.fromstring(b" ".join(texts).translate(_POINT_PUNCTUATION), sep=" ")
        except ValueError:  # text that is not a number
            numbers = None
        if numbers is None or len(numbers) != 2 * counts.sum():
            raise PrometheusQueryError(
                f"{self.url} answered {params['query']!r} with an unexpected shape (points "
                'that are not [time, "value"] pairs); an instant or range vector was expected'
            )
        return SeriesColumns(
            labels=[r.metric for r in result],
            counts=counts,
            times=numbers[0::2].copy(),
            values=numbers[1::2].copy(),
        )

    def query_vector(self, promql: str, at: float) -> list[Sample]:
        """An instant query whose answer is a vector: what `query` returns, decoded as
        columns (several times less CPU on answers of 100,000 series)."""
        columns = self.call_series("query", {"query": promql, "time": _fmt(at)})
        if not (columns.counts == 1).all():
            counts = sorted(set(columns.counts.tolist()))
            raise PrometheusQueryError(
                f"{self.url} answered {promql!r} with series of {counts} points; an instant "
                "vector (one point per series) was expected"
            )
        times, values = columns.times.tolist(), columns.values.tolist()
        return [
            Sample(labels, [(t, v)])
            for labels, t, v in zip(columns.labels, times, values, strict=True)
        ]

    # ---------------------------------------------------------------- transport
    def _post(self, endpoint: str, params: dict[str, str]) -> requests.Response:
        """POST with retries on connection errors, timeouts, 429 and 5xx."""
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
        return response

    def _not_json(self, endpoint: str, response: requests.Response) -> PrometheusQueryError:
        return PrometheusQueryError(
            f"{self.url}/api/v1/{endpoint} answered HTTP {response.status_code} with no JSON: "
            f"is {self.url} a Prometheus-compatible API? Body: {response.text[:200]!r}"
        )

    def _check(
        self,
        params: dict[str, str],
        status: str | None,
        error: str,
        warnings: list[Any],
        partial: bool,
    ) -> None:
        if status != "success":
            raise PrometheusQueryError(
                f"Prometheus at {self.url} rejected the query {params['query']!r}: {error}"
            )
        if partial:
            warnings.append("the answer is partial (isPartial: true)")
        if warnings and not self.allow_partial:
            raise PartialDataError(
                f"Prometheus at {self.url} returned partial data for {params['query']!r}: "
                f"{'; '.join(map(str, warnings))}. Retry when every store answers; nothing "
                "was written for this range"
            )


@dataclass
class SeriesColumns:
    """A vector or matrix answer as columns."""

    labels: list[dict[str, str]]  # per series
    counts: np.ndarray  # per series: its number of points
    times: np.ndarray  # per point, series after series
    values: np.ndarray  # per point


# The shape of a vector or matrix answer, for msgspec's typed decoder. The points stay
# JSON text (see call_series).
class _Series(msgspec.Struct):
    metric: dict[str, str] = {}
    values: msgspec.Raw = msgspec.Raw(b"[]")
    value: msgspec.Raw = msgspec.Raw(b"")


class _Data(msgspec.Struct):
    resultType: str = ""  # noqa: N815 (the API's names)
    result: list[_Series] = []


class _Payload(msgspec.Struct):
    status: str = ""
    data: _Data | None = None
    errorType: str = ""  # noqa: N815
    error: str = ""
    warnings: list[str] = []
    isPartial: bool = False  # noqa: N815 (VictoriaMetrics)


_SERIES_DECODER = msgspec.json.Decoder(_Payload)
_POINT_PUNCTUATION = bytes.maketrans(b'[],"', b"    ")


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
