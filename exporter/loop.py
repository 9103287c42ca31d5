"""The collection loop: sample devices, attribute, integrate, publish a new state.

It runs on its own thread at a fixed rate. A scrape reads the last published state and
never waits for hardware. One failing part degrades only itself: a source that raises
keeps the last snapshot's GPUs out (they are reported down), an attribution that
raises keeps the last mapping (marked stale).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import Histogram

from exporter import catalogue as cat
from exporter.attribution import Attribution
from exporter.integrator import UsageIntegrator
from exporter.model import DeviceSnapshot
from exporter.pod_usage import PodDeviceKey, PodDeviceUsage, split_by_pod
from exporter.sources import DeviceSource
from exporter.state import ExporterState, SelfStats, empty_state

log = logging.getLogger(__name__)

# Maps one collection's snapshot to who holds what; must not block for long.
Attributor = Callable[[DeviceSnapshot], Attribution]

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def no_attribution(_: DeviceSnapshot) -> Attribution:
    return Attribution()


class CollectionLoop:
    def __init__(
        self,
        source: DeviceSource,
        node: str,
        attributor: Attributor = no_attribution,
        interval_s: float = 1.0,
        max_pod_series: int = 10_000,
        attribution_errors: Callable[[], dict[tuple[str, str], int]] | None = None,
        after_collect: list[Callable[[ExporterState], None]] | None = None,
        registry=None,
        clock: Callable[[], float] = time.monotonic,
        departed_grace_s: float = 300.0,
    ) -> None:
        self.source = source
        self.node = node
        self.attributor = attributor
        self.interval_s = interval_s
        self.max_pod_series = max_pod_series
        self._attribution_errors = attribution_errors
        self._after_collect = list(after_collect or [])
        self._clock = clock
        self._integrator = UsageIntegrator(
            max_gap_s=max(10.0, 5 * interval_s), departed_grace_s=departed_grace_s
        )
        self._state = empty_state(node)
        self._last_attribution = Attribution()
        self._exported_keys: set[PodDeviceKey] = set()
        self._dropped_keys: set[PodDeviceKey] = set()  # dropped now (one warning each)
        self._dropped_total = 0
        self._own_errors: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.duration = Histogram(
            cat.EXPORTER_COLLECTION_DURATION.name,
            cat.EXPORTER_COLLECTION_DURATION.help,
            labelnames=cat.EXPORTER_COLLECTION_DURATION.labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        ).labels(node=node)

    @property
    def state(self) -> ExporterState:
        return self._state

    def collect_once(self) -> ExporterState:
        started = time.perf_counter()
        collector_up: dict[str, bool] = {}
        previous = self._state
        try:
            snapshot = self.source.sample()
            collector_up["device"] = True
        except Exception as exc:  # a source bug must not kill the exporter
            log.error("device source failed", extra={"error": repr(exc)})
            self._own_errors[("device", type(exc).__name__)] += 1
            collector_up["device"] = False
            snapshot = previous.snapshot
        attribution = self._last_attribution
        if snapshot is not None:
            try:
                attribution = self.attributor(snapshot)
                self._last_attribution = attribution
                collector_up["attribution"] = True
            except Exception as exc:
                log.error(
                    "attribution failed; keeping the last mapping", extra={"error": repr(exc)}
                )
                self._own_errors[("attribution", type(exc).__name__)] += 1
                attribution = Attribution(
                    devices=attribution.devices,
                    processes=attribution.processes,
                    stale={**attribution.stale, "attribution": True},
                    age_seconds=attribution.age_seconds,
                )
                collector_up["attribution"] = False

        usages: tuple[PodDeviceUsage, ...] = ()
        totals = previous.totals
        if snapshot is not None and collector_up.get("device"):
            usages = self._cap(split_by_pod(snapshot.gpus, attribution))
            # Departed pods' frozen counters count against the cap too, after live pods.
            early = self._integrator.expired_early
            totals = self._integrator.update(
                snapshot, usages, departed_room=self.max_pod_series - len(usages)
            )
            if self._integrator.expired_early > early:
                log.warning(
                    "pod series cap reached; departed pods' counters dropped before their "
                    "grace period ended (raise --max-pod-series)",
                    extra={"series": self._integrator.expired_early - early},
                )

        errors = dict(self._attribution_errors() if self._attribution_errors else {})
        for key, count in self._own_errors.items():
            errors[key] = errors.get(key, 0) + count
        stats = SelfStats(
            collections=previous.stats.collections + 1,
            last_collection_timestamp=time.time(),
            nvml_errors=dict(snapshot.errors) if snapshot else {},
            attribution_errors=errors,
            dropped_series=self._dropped_total + self._integrator.expired_early,
            collector_up=collector_up,
        )
        self._state = ExporterState(
            node=self.node,
            generation=previous.generation + 1,
            snapshot=snapshot,
            attribution=attribution,
            usages=usages,
            totals=totals,
            stats=stats,
        )
        for hook in self._after_collect:
            try:
                hook(self._state)
            except Exception as exc:  # a failing extra collector degrades only itself
                log.error("after-collection hook failed", extra={"error": repr(exc)})
                self._own_errors[("hook", type(exc).__name__)] += 1
        self.duration.observe(time.perf_counter() - started)
        return self._state

    def _cap(self, usages: list[PodDeviceUsage]) -> tuple[PodDeviceUsage, ...]:
        """Keep at most max_pod_series pod series; series already exported keep their place."""
        if len(usages) <= self.max_pod_series:
            self._exported_keys = {u.key for u in usages}
            self._dropped_keys = set()
            return tuple(usages)
        kept = [u for u in usages if u.key in self._exported_keys][: self.max_pod_series]
        room = self.max_pod_series - len(kept)
        newcomers = [u for u in usages if u.key not in self._exported_keys]
        kept.extend(newcomers[:room])
        dropped = {usage.key for usage in newcomers[room:]}
        for key in dropped - self._dropped_keys:
            log.warning("pod series cap reached; dropping", extra={"pod": key.pod})
            self._dropped_total += 1
        # Only the keys dropped now are remembered: a set of every key ever dropped
        # would grow without bound on a node with pod churn.
        self._dropped_keys = dropped
        self._exported_keys = {u.key for u in kept}
        return tuple(kept)

    def run(self) -> None:
        next_at = self._clock()
        while not self._stop.is_set():
            self.collect_once()
            next_at += self.interval_s
            delay = next_at - self._clock()
            if delay < 0:  # fell behind: skip the missed ticks rather than burst
                next_at = self._clock()
                delay = 0
            self._stop.wait(delay)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="collection-loop", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
