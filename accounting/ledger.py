"""The ledger: hourly GPU usage and the Kubernetes metadata it is charged by.

SQLAlchemy Core on an SQLite file by default (`$GPULEDGER_LEDGER`, else
./gpuledger-ledger.sqlite) or PostgreSQL (`postgresql+psycopg2://...`).

Tables (docs/cost-model.md, section 1):
- `usage`: per hour and (namespace, pod, node, GPU model, sharing): held and busy
  milliseconds, memory byte-seconds, energy millijoules. Integers, so sums are exact.
- `capacity`: per hour and (node, GPU model): GPUs, capacity and busy milliseconds,
  GPU energy millijoules.
- `ingested_hours`: one row per finished hour, written in the same transaction as the
  hour's rows: an hour is in the ledger completely or not at all.
- `provisional_hours`: hours whose rows are in the ledger but not final (the hour in
  progress, or one that has not settled): reports use them and say so; the next run
  that ingests the hour replaces them and marks the hour done.
- `gpu_sources`: per hour, how many GPUs (and nodes) reported from each device source
  (the exporter's `source` label: `nvml`, or `simulated` for demos and tests), so that
  a report made from simulated GPUs says so.
- `pods`, `namespaces`, `nodes`: the last known metadata, kept after the objects are
  gone so that later reports stay complete.

Query functions return pandas DataFrames; reports and the HTTP API read only these.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgspec
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"
# Versions this one opens by adding what is new: version 1 lacked `gpu_sources` and
# `provisional_hours` (new tables only, created on open); its hours' device source is
# reported as unknown.
UPGRADABLE_VERSIONS = ("1",)
UNKNOWN_SOURCE = "unknown"
DEFAULT_LEDGER_FILE = "gpuledger-ledger.sqlite"
HOUR = 3600

metadata = sa.MetaData()

_name = sa.String(253)  # Kubernetes names (DNS subdomain length)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("hour", sa.BigInteger, primary_key=True),
    sa.Column("namespace", _name, primary_key=True),
    sa.Column("pod", _name, primary_key=True),
    sa.Column("node", _name, primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("sharing", sa.String(32), primary_key=True),
    sa.Column("held_ms", sa.BigInteger, nullable=False),
    sa.Column("busy_ms", sa.BigInteger, nullable=False),
    sa.Column("memory_byte_seconds", sa.Float, nullable=False),
    sa.Column("energy_mj", sa.BigInteger, nullable=False),
    # SQLite: rows stored in key order, no separate key index: a smaller file and
    # faster hourly writes. (Ledgers made before keep their tables as they are.)
    sqlite_with_rowid=False,
)

capacity = sa.Table(
    "capacity",
    metadata,
    sa.Column("hour", sa.BigInteger, primary_key=True),
    sa.Column("node", _name, primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("capacity_ms", sa.BigInteger, nullable=False),
    sa.Column("busy_ms", sa.BigInteger, nullable=False),
    sa.Column("energy_mj", sa.BigInteger, nullable=False),
    sqlite_with_rowid=False,
)


def _hour_marks(name: str, *extra: sa.Column) -> sa.Table:
    """A table of written hours: when, from where, how many usage rows and GPUs."""
    return sa.Table(
        name,
        metadata,
        sa.Column("hour", sa.BigInteger, primary_key=True),
        *extra,
        sa.Column("ingested_at", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("usage_rows", sa.Integer, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
    )


ingested_hours = _hour_marks("ingested_hours")
# The rows hold the data up to `through` (at most hour + 1 h).
provisional_hours = _hour_marks(
    "provisional_hours", sa.Column("through", sa.BigInteger, nullable=False)
)

gpu_sources = sa.Table(
    "gpu_sources",
    metadata,
    sa.Column("hour", sa.BigInteger, primary_key=True),
    # The exporter's `source` label; "" when the series had none.
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("nodes", sa.Integer, nullable=False),
)

pods = sa.Table(
    "pods",
    metadata,
    sa.Column("namespace", _name, primary_key=True),
    sa.Column("pod", _name, primary_key=True),
    sa.Column("uid", sa.String(64), nullable=False, default=""),
    sa.Column("node", _name, nullable=False, default=""),
    sa.Column("owner_kind", sa.String(128), nullable=False, default=""),
    sa.Column("owner_name", _name, nullable=False, default=""),
    sa.Column("job_kind", sa.String(128), nullable=False, default=""),
    sa.Column("job_name", _name, nullable=False, default=""),
    sa.Column("chain", sa.Text, nullable=False, default="[]"),  # JSON ["Kind/name", ...]
    sa.Column("queue", _name, nullable=False, default=""),
    sa.Column("cluster_queue", _name, nullable=False, default=""),
    sa.Column("cohort", _name, nullable=False, default=""),
    sa.Column("labels", sa.Text, nullable=False, default="{}"),  # JSON
    sa.Column("job_labels", sa.Text, nullable=False, default="{}"),  # JSON
    sa.Column("gpu_request", sa.Float, nullable=True),
    sa.Column("resolved_by", sa.String(32), nullable=False, default="none"),
    sa.Column("first_seen", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    sa.Column("observed_at", sa.BigInteger, nullable=False),
    # JSON: when each observed field (and the owner chain) was last observed.
    sa.Column("field_times", sa.Text, nullable=False, default="{}"),
)

namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("namespace", _name, primary_key=True),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("observed_at", sa.BigInteger, nullable=False),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node", _name, primary_key=True),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("observed_at", sa.BigInteger, nullable=False),
)

meta = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

USAGE_KEY = ("hour", "namespace", "pod", "node", "model", "sharing")
CAPACITY_KEY = ("hour", "node", "model")
# Row tuples for `Ledger.write_hours` are in the tables' column order.
USAGE_COLUMNS = tuple(c.name for c in usage.columns)
CAPACITY_COLUMNS = tuple(c.name for c in capacity.columns)
GPU_SOURCE_COLUMNS = tuple(c.name for c in gpu_sources.columns)

# How much a resolution of the owner chain is worth: the API sees further than
# kube-state-metrics, which sees further than nothing.
RESOLUTION_RANK = {"none": 0, "kube-state-metrics": 1, "kube-api": 2}
_OWNER_FIELDS = (
    "owner_kind",
    "owner_name",
    "job_kind",
    "job_name",
    "chain",
    "queue",
    "cluster_queue",
    "cohort",
    "job_labels",
    "resolved_by",
)
_OBSERVED_FIELDS = ("uid", "node", "labels", "gpu_request")
_EMPTY = ("", "{}", None)
# json.dumps(..., sort_keys=True) without making an encoder per call (four per pod).
_sorted_json = json.JSONEncoder(sort_keys=True).encode


class LedgerError(RuntimeError):
    """The ledger cannot be opened or is of another schema version."""


def default_ledger_url() -> str:
    return os.environ.get("GPULEDGER_LEDGER") or DEFAULT_LEDGER_FILE


def normalise_url(url_or_path: str) -> str:
    """A plain path means an SQLite file."""
    if "://" in url_or_path:
        return url_or_path
    return f"sqlite:///{os.path.abspath(url_or_path)}"


@dataclass(frozen=True)
class PodMetadata:
    """What the ledger keeps about one pod (see `pods`); labels are plain dicts."""

    namespace: str
    pod: str
    first_seen: int
    last_seen: int
    observed_at: int
    uid: str = ""
    node: str = ""
    owner_kind: str = ""
    owner_name: str = ""
    job_kind: str = ""
    job_name: str = ""
    chain: tuple[str, ...] = ()
    queue: str = ""
    cluster_queue: str = ""
    cohort: str = ""
    labels: Mapping[str, str] | None = None
    job_labels: Mapping[str, str] | None = None
    gpu_request: float | None = None
    resolved_by: str = "none"

    def row(self) -> dict[str, Any]:
        row = {
            "namespace": self.namespace,
            "pod": self.pod,
            "uid": self.uid,
            "node": self.node,
            "owner_kind": self.owner_kind,
            "owner_name": self.owner_name,
            "job_kind": self.job_kind,
            "job_name": self.job_name,
            "chain": json.dumps(list(self.chain)),
            "queue": self.queue,
            "cluster_queue": self.cluster_queue,
            "cohort": self.cohort,
            "labels": _sorted_json(dict(self.labels)) if self.labels else "{}",
            "job_labels": _sorted_json(dict(self.job_labels)) if self.job_labels else "{}",
            "gpu_request": self.gpu_request,
            "resolved_by": self.resolved_by,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "observed_at": self.observed_at,
        }
        # A field is stamped only when this observation has it.
        times = {f: self.observed_at if row[f] not in _EMPTY else 0 for f in _OBSERVED_FIELDS}
        row["field_times"] = _sorted_json(times | {"owner": self.observed_at})
        return row


def merge_pod_rows(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Combine two observations of a pod, whatever order they come in.

    The seen range widens; each observed field (labels, node, uid, GPU request) follows
    the newest observation that has it; the owner chain follows the best resolution
    (API > kube-state-metrics > none), then the newest. Being order-free makes a
    resumed or re-run ingestion end in the same ledger as an uninterrupted one.
    """
    if old is None:
        return dict(new)
    merged = dict(old)
    merged["first_seen"] = min(old["first_seen"], new["first_seen"])
    merged["last_seen"] = max(old["last_seen"], new["last_seen"])
    merged["observed_at"] = max(old["observed_at"], new["observed_at"])
    times_old = msgspec.json.decode(old["field_times"])
    times_new = msgspec.json.decode(new["field_times"])
    times = dict(times_old)
    for name in _OBSERVED_FIELDS:
        # An observation that lacks a field (kube-state-metrics without a label
        # allowlist, a pod already gone from the API) does not erase what was seen.
        if new[name] in _EMPTY:
            continue
        if old[name] in _EMPTY or times_new[name] >= times_old[name]:
            merged[name], times[name] = new[name], times_new[name]
    rank_old = (RESOLUTION_RANK.get(old["resolved_by"], 0), times_old["owner"])
    rank_new = (RESOLUTION_RANK.get(new["resolved_by"], 0), times_new["owner"])
    if rank_new >= rank_old:
        for name in _OWNER_FIELDS:
            merged[name] = new[name]
        times["owner"] = times_new["owner"]
    merged["field_times"] = _sorted_json(times)
    return merged


class Ledger:
    """One ledger database. Every write is one transaction."""

    def __init__(self, url: str | None = None, engine: Engine | None = None) -> None:
        self.url = normalise_url(url or default_ledger_url())
        self.engine = engine or _make_engine(self.url)

    # ---------------------------------------------------------------- setup
    def create(self) -> Ledger:
        """Create the tables if missing; upgrade a ledger of an older version that only
        lacks tables; refuse one of any other version."""
        try:
            with self.engine.begin() as conn:
                found = None
                if sa.inspect(conn).has_table(meta.name):
                    found = conn.execute(
                        sa.select(meta.c.value).where(meta.c.key == "schema_version")
                    ).scalar()
                if found not in (None, SCHEMA_VERSION, *UPGRADABLE_VERSIONS):
                    raise LedgerError(
                        f"the ledger {self.safe_url} has schema version {found}, this gpuledger "
                        f"writes version {SCHEMA_VERSION} (and upgrades "
                        f"{', '.join(UPGRADABLE_VERSIONS)}): use a ledger made by this version"
                    )
                # Creates only what is missing: an interrupted upgrade completes on the
                # next open, and the version changes last.
                metadata.create_all(conn)
                if found is None:
                    conn.execute(meta.insert().values(key="schema_version", value=SCHEMA_VERSION))
                elif found != SCHEMA_VERSION:
                    log.info(
                        "upgrading the ledger %s from schema version %s to %s",
                        self.safe_url,
                        found,
                        SCHEMA_VERSION,
                    )
                    conn.execute(
                        meta.update()
                        .where(meta.c.key == "schema_version")
                        .values(value=SCHEMA_VERSION)
                    )
        except sa.exc.OperationalError as error:
            raise LedgerError(f"cannot open the ledger {self.safe_url}: {error.orig}") from None
        return self

    @property
    def safe_url(self) -> str:
        """The URL without a password, for messages."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def threads_may_read(self) -> bool:
        """Whether other threads can read this ledger, each on a connection of its own:
        not an in-memory SQLite ledger, whose one connection is its thread's."""
        return not isinstance(self.engine.pool, (sa.pool.SingletonThreadPool, sa.pool.StaticPool))

    # ---------------------------------------------------------------- writes
    def write_hour(
        self,
        hour: int,
        usage_rows: Sequence[Mapping[str, Any]],
        capacity_rows: Sequence[Mapping[str, Any]],
        source: str,
        gpu_source_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Replace one hour's rows (dicts by column name, without `hour`) and mark it
        done, in one transaction."""

        def tuples(rows: Sequence[Mapping[str, Any]], columns: tuple[str, ...]) -> list[tuple]:
            return [tuple(row[c] for c in columns) for row in ({**r, "hour": hour} for r in rows)]

        self.write_hours(
            [hour],
            tuples(usage_rows, USAGE_COLUMNS),
            tuples(capacity_rows, CAPACITY_COLUMNS),
            source,
            gpu_source_rows=tuples(gpu_source_rows, GPU_SOURCE_COLUMNS),
        )

    def write_hours(
        self,
        hours: Sequence[int],
        usage_rows: Sequence[Sequence[Any]],
        capacity_rows: Sequence[Sequence[Any]],
        source: str,
        *,
        gpu_source_rows: Sequence[Sequence[Any]] = (),
        provisional_through: int | None = None,
    ) -> None:
        """Replace these hours' rows and mark each done, all in one transaction.

        Rows are tuples in the tables' column order (USAGE_COLUMNS, CAPACITY_COLUMNS,
        GPU_SOURCE_COLUMNS), `hour` first, of plain Python values; every row's hour must
        be one of `hours`. `source` names where the data came from (a Prometheus URL).
        With `provisional_through` (one hour only): the rows hold the hour up to that
        time, and the hour is recorded as provisional, not done, so that the next run
        that ingests it replaces it.
        """
        hours = sorted(set(hours))
        for hour in hours:
            if hour % HOUR:
                raise ValueError(f"hour {hour} is not on an hour boundary")
        if provisional_through is not None and (
            len(hours) != 1 or not hours[0] < provisional_through <= hours[0] + HOUR
        ):
            raise ValueError(
                "a provisional write is of one hour, through a time inside it: "
                f"hours {hours}, through {provisional_through}"
            )
        rows_per_hour = Counter(map(itemgetter(0), usage_rows))
        gpus_per_hour: Counter[int] = Counter()
        gpus = CAPACITY_COLUMNS.index("gpus")
        for row in capacity_rows:
            gpus_per_hour[row[0]] += int(row[gpus])
        stray = (set(rows_per_hour) | set(gpus_per_hour)) - set(hours)
        stray |= {row[0] for row in gpu_source_rows} - set(hours)
        if stray:
            raise ValueError(f"rows of hours {sorted(stray)[:3]} are not among the hours written")
        now = int(time.time())
        with self.engine.begin() as conn:
            for table in (usage, capacity, gpu_sources, ingested_hours, provisional_hours):
                conn.execute(table.delete().where(table.c.hour.in_(hours)))
            _insert(conn, usage, usage_rows)
            _insert(conn, capacity, capacity_rows)
            _insert(conn, gpu_sources, gpu_source_rows)
            marks = [
                (hour, now, source[:1024], rows_per_hour[hour], gpus_per_hour[hour])
                for hour in hours
            ]
            if provisional_through is None:
                _insert(conn, ingested_hours, marks)
            else:
                _insert(
                    conn, provisional_hours, [(m[0], provisional_through, *m[1:]) for m in marks]
                )

    def merge_metadata(
        self,
        pod_rows: Iterable[PodMetadata],
        namespace_labels: Mapping[str, tuple[Mapping[str, str], int]] | None = None,
        node_labels: Mapping[str, tuple[Mapping[str, str], int]] | None = None,
    ) -> None:
        """Merge new observations of pods, namespaces and nodes, in one transaction."""
        incoming = [p.row() for p in pod_rows]
        with self.engine.begin() as conn:
            if incoming:
                existing = _existing_pods(conn, [(r["namespace"], r["pod"]) for r in incoming])
                merged = [
                    merge_pod_rows(existing.get((r["namespace"], r["pod"])), r) for r in incoming
                ]
                _upsert(conn, pods, merged, ("namespace", "pod"))
            for table, key, observations in (
                (namespaces, "namespace", namespace_labels or {}),
                (nodes, "node", node_labels or {}),
            ):
                if not observations:
                    continue
                stored = {
                    row[0]: row[1]
                    for row in conn.execute(
                        sa.select(table.c[key], table.c.observed_at).where(
                            table.c[key].in_(list(observations))
                        )
                    )
                }
                rows = [
                    {
                        key: name,
                        "labels": _sorted_json(dict(labels)),
                        "observed_at": at,
                    }
                    for name, (labels, at) in observations.items()
                    if at >= stored.get(name, -1)
                ]
                _upsert(conn, table, rows, (key,))

    # ---------------------------------------------------------------- reads
    def done_hours(self, start: int, end: int) -> set[int]:
        """Hours in [start, end) that are in the ledger."""
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(ingested_hours.c.hour).where(
                    ingested_hours.c.hour >= start, ingested_hours.c.hour < end
                )
            )
            return {int(row[0]) for row in result}

    def hours_with_capacity(self, hours: Iterable[int]) -> set[int]:
        """Of these hours, those the ledger has GPU capacity for (done or provisional)."""
        hours = list(hours)
        if not hours:
            return set()
        found: set[int] = set()
        with self.engine.connect() as conn:
            for table in (ingested_hours, provisional_hours):
                result = conn.execute(
                    sa.select(table.c.hour).where(table.c.hour.in_(hours), table.c.gpus > 0)
                )
                found |= {int(row[0]) for row in result}
        return found

    def provisional(self, start: int, end: int) -> dict[int, int]:
        """Provisional hours in [start, end): hour -> the time its data runs to."""
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(provisional_hours.c.hour, provisional_hours.c.through).where(
                    provisional_hours.c.hour >= start, provisional_hours.c.hour < end
                )
            )
            return {int(hour): int(through) for hour, through in result}

    def gpu_hours_by_source(self, start: int, end: int) -> dict[str, int]:
        """GPU-hours of [start, end) (done and provisional hours) by device source.

        Hours written before sources were recorded (schema version 1), and series without
        a `source` label, count as `unknown`.
        """
        found: Counter[str] = Counter()
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(gpu_sources.c.source, sa.func.sum(gpu_sources.c.gpus))
                .where(gpu_sources.c.hour >= start, gpu_sources.c.hour < end)
                .group_by(gpu_sources.c.source)
            )
            for name, gpus in result:
                found[name or UNKNOWN_SOURCE] += int(gpus or 0)
            for table in (ingested_hours, provisional_hours):
                unrecorded = conn.execute(
                    sa.select(sa.func.sum(table.c.gpus)).where(
                        table.c.hour >= start,
                        table.c.hour < end,
                        ~sa.exists().where(gpu_sources.c.hour == table.c.hour),
                    )
                ).scalar()
                if unrecorded:
                    found[UNKNOWN_SOURCE] += int(unrecorded)
        return {name: found[name] for name in sorted(found) if found[name]}

    def last_hour(self) -> int | None:
        """The latest hour in the ledger, or None when it is empty."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(ingested_hours.c.hour))).scalar()
        return None if value is None else int(value)

    def hours_frame(self, start: int, end: int) -> pd.DataFrame:
        return self._frame(
            sa.select(ingested_hours)
            .where(ingested_hours.c.hour >= start, ingested_hours.c.hour < end)
            .order_by(ingested_hours.c.hour)
        )

    def usage_frame(self, start: int, end: int) -> pd.DataFrame:
        """Usage rows of hours in [start, end)."""
        return self._frame(
            sa.select(usage)
            .where(usage.c.hour >= start, usage.c.hour < end)
            .order_by(*[usage.c[k] for k in USAGE_KEY])
        )

    def capacity_frame(self, start: int, end: int) -> pd.DataFrame:
        """Capacity rows of hours in [start, end)."""
        return self._frame(
            sa.select(capacity)
            .where(capacity.c.hour >= start, capacity.c.hour < end)
            .order_by(*[capacity.c[k] for k in CAPACITY_KEY])
        )

    def pods_frame(self) -> pd.DataFrame:
        """Every pod the ledger knows; JSON columns (chain, labels, job_labels) decoded."""
        frame = self._frame(sa.select(pods).order_by(pods.c.namespace, pods.c.pod))
        # msgspec: the same values as json.loads, several times faster on 50,000 pods.
        for column in ("chain", "labels", "job_labels"):
            frame[column] = list(map(msgspec.json.decode, frame[column].tolist()))
        return frame

    def namespaces_frame(self) -> pd.DataFrame:
        frame = self._frame(sa.select(namespaces).order_by(namespaces.c.namespace))
        frame["labels"] = [json.loads(v) for v in frame["labels"]]
        return frame

    def nodes_frame(self) -> pd.DataFrame:
        frame = self._frame(sa.select(nodes).order_by(nodes.c.node))
        frame["labels"] = [json.loads(v) for v in frame["labels"]]
        return frame

    def pod_resolutions(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """How each of these pods' owner chains was resolved so far ('none' if unknown)."""
        keys = list(keys)
        with self.engine.connect() as conn:
            found = _existing_pods(conn, keys)
        return {key: found[key]["resolved_by"] if key in found else "none" for key in keys}

    def table_rows(self, name: str) -> list[tuple[Any, ...]]:
        """Every row of a table in key order (for comparing two ledgers in tests and tools)."""
        table = metadata.tables[name]
        with self.engine.connect() as conn:
            return [
                tuple(row)
                for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            ]

    def _frame(self, statement: sa.Select) -> pd.DataFrame:
        with self.engine.connect() as conn:
            result = conn.execute(statement)
            columns = list(result.keys())
            # The driver's plain tuples: pandas builds a frame from them several times
            # faster than from SQLAlchemy's Row objects, and these columns need no
            # result processing.
            return pd.DataFrame(result.cursor.fetchall(), columns=columns)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers (reports, the API) never block the hourly writer, and a
            # killed writer leaves the last committed state.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as error:
        raise LedgerError(
            f"cannot use the ledger URL {url!r}: {error}. Use a file path, "
            "sqlite:///PATH or postgresql+psycopg2://USER@HOST/DB"
        ) from None


def _existing_pods(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    if conn.dialect.name == "sqlite":
        # Joined with the keys, SQLite looks each pod up by its key; `(namespace, pod)
        # IN (...)` would read the whole table for every batch.
        columns = [c.name for c in pods.columns]
        quote = conn.dialect.identifier_preparer.quote
        selected = ", ".join(f"p.{quote(c)}" for c in columns)
        for offset in range(0, len(keys), 2000):
            batch = keys[offset : offset + 2000]
            result = conn.exec_driver_sql(
                f"WITH k(namespace, pod) AS (VALUES {', '.join(['(?, ?)'] * len(batch))}) "
                f"SELECT {selected} FROM k JOIN pods AS p "
                "ON p.namespace = k.namespace AND p.pod = k.pod",
                tuple(part for key in batch for part in key),
            )
            for row in result.fetchall():
                found[(row[0], row[1])] = dict(zip(columns, row, strict=True))
        return found
    for offset in range(0, len(keys), 400):
        batch = keys[offset : offset + 400]
        result = conn.execute(
            sa.select(pods).where(sa.tuple_(pods.c.namespace, pods.c.pod).in_(batch))
        )
        for row in result.mappings():
            found[(row["namespace"], row["pod"])] = dict(row)
    return found


def _insert(conn: Connection, table: sa.Table, rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows (tuples in the table's column order) in one executemany."""
    if not rows:
        return
    columns = [c.name for c in table.columns]
    if conn.dialect.name == "sqlite":
        # Straight to the driver: SQLAlchemy's per-row parameter handling costs more
        # than SQLite's insert itself.
        conn.exec_driver_sql(
            _sqlite_insert(conn, table, columns), rows if isinstance(rows, list) else list(rows)
        )
        return
    # PostgreSQL: SQLAlchemy batches these into multi-row INSERTs.
    conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])


def _sqlite_insert(conn: Connection, table: sa.Table, columns: Sequence[str]) -> str:
    """INSERT INTO table (columns) VALUES (?, ...), for the sqlite3 driver."""
    quote = conn.dialect.identifier_preparer.quote
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) "
        f"VALUES ({', '.join('?' * len(columns))})"
    )


def _upsert(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], key: Sequence[str]
) -> None:
    """Insert rows, replacing those with the same key (SQLite and PostgreSQL)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "sqlite":
        # Straight to the driver, as in _insert; rows have every column.
        quote = conn.dialect.identifier_preparer.quote
        columns = [c.name for c in table.columns]
        updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in key)
        conn.exec_driver_sql(
            f"{_sqlite_insert(conn, table, columns)} "
            f"ON CONFLICT ({', '.join(map(quote, key))}) DO UPDATE SET {updates}",
            [tuple(row[c] for c in columns) for row in rows],
        )
        return
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - only the two supported databases reach here
        raise LedgerError(f"unsupported ledger database {dialect}: use SQLite or PostgreSQL")
    for offset in range(0, len(rows), 1000):
        statement = insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in key},
        )
        conn.execute(statement, list(rows[offset : offset + 1000]))
