import pytest

from exporter.attribution import PodRef
from exporter.collective.aggregator import (
    BUSBW_BUCKETS,
    AggregatorLimits,
    CollectiveAggregator,
)
from gpuledger.probe_wire import OpReport, Report

POD_A = PodRef("ml", "train-a", "main", "uid-a")
POD_B = PodRef("ml", "train-b", "main", "uid-b")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(instance="aa", seq=0, uptime=10.0, dropped=0, **ops) -> Report:
    return Report(instance=instance, seq=seq, uptime_s=uptime, dropped_reports=dropped, ops=ops)


def allreduce(nbytes: int, seconds: float, calls: int, world: int = 4) -> OpReport:
    return OpReport(nbytes, nbytes * 2 * (world - 1) / world, seconds, calls, world)


def only(snapshot, operation="all_reduce", pod=POD_A):
    (op,) = [o for o in snapshot.operations if o.operation == operation and o.pod == pod]
    return op


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def agg(clock):
    return CollectiveAggregator(clock=clock)


def test_ranks_of_one_pod_sum_and_cumulative_reports_add_their_difference(agg, clock):
    assert agg.ingest(101, POD_A, report(seq=0, all_reduce=allreduce(1000, 1.0, 10))) is None
    assert agg.ingest(102, POD_A, report(seq=0, all_reduce=allreduce(3000, 1.0, 10))) is None
    clock.now += 1
    second = report(seq=1, uptime=11, all_reduce=allreduce(1500, 1.5, 15))
    assert agg.ingest(101, POD_A, second) is None
    op = only(agg.snapshot())
    assert (op.bytes, op.calls, op.seconds, op.world_size) == (4500, 25, 2.5, 4)
    assert op.bus_bytes == pytest.approx(4500 * 1.5)
    stats = agg.snapshot().pods[0]
    assert (stats.pod, stats.reports) == (POD_A, 3)


def test_bandwidth_is_the_sum_over_the_ranks_last_periods(agg, clock):
    agg.ingest(101, POD_A, report(seq=0, all_reduce=allreduce(1000, 1.0, 1)))
    agg.ingest(102, POD_A, report(seq=0, all_reduce=allreduce(3000, 1.0, 1)))
    clock.now += 1
    # rank 101's last period: 500 bytes in 0.25 s
    agg.ingest(101, POD_A, report(seq=1, uptime=11, all_reduce=allreduce(1500, 1.25, 2)))
    op = only(agg.snapshot())
    assert op.algbw_bytes_per_s == pytest.approx((500 + 3000) / (0.25 + 1.0))
    assert op.busbw_bytes_per_s == pytest.approx(op.algbw_bytes_per_s * 1.5)
    clock.now += agg.limits.bandwidth_window_s + 1  # no traffic since: no bandwidth to show
    assert only(agg.snapshot()).busbw_bytes_per_s is None
    assert only(agg.snapshot()).bytes == 4500  # counters stay


def test_each_report_period_lands_in_the_histogram(agg, clock):
    agg.ingest(101, POD_A, report(seq=0, all_reduce=allreduce(4_000_000_000, 2.0, 1, world=2)))
    clock.now += 1
    agg.ingest(
        101, POD_A, report(seq=1, uptime=11, all_reduce=allreduce(4_000_000_000, 2.0, 1, world=2))
    )
    agg.ingest(
        101,
        POD_A,
        report(
            seq=2,
            uptime=11.5,
            barrier=OpReport(0, 0.0, 0.1, 1, 2),
            all_reduce=allreduce(4_000_000_000, 2.0, 1, world=2),
        ),
    )
    op = only(agg.snapshot())
    assert op.busbw_count == 1  # periods without traffic are not observed
    assert op.busbw_sum == pytest.approx(2e9)
    assert op.busbw_bucket_counts[BUSBW_BUCKETS.index(1e9)] == 0
    assert op.busbw_bucket_counts[BUSBW_BUCKETS.index(2.5e9)] == 1
    assert op.busbw_bucket_counts[-1] == 1
    barrier = only(agg.snapshot(), "barrier")
    assert (barrier.calls, barrier.bytes, barrier.busbw_bytes_per_s) == (1, 0, None)


def test_a_new_instance_of_a_process_is_a_new_stream(agg, clock):
    agg.ingest(101, POD_A, report(instance="aa", seq=5, all_reduce=allreduce(1000, 1.0, 1)))
    clock.now += 1
    # The process restarted its probe: totals from zero again, under a new instance.
    agg.ingest(
        101, POD_A, report(instance="bb", seq=0, uptime=1, all_reduce=allreduce(200, 0.1, 1))
    )
    assert only(agg.snapshot()).bytes == 1200


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (report(seq=1, uptime=11, all_reduce=allreduce(900, 1.0, 10)), "bytes went backwards"),
        (report(seq=0, uptime=11, all_reduce=allreduce(2000, 1.0, 10)), "seq repeated"),
        (report(seq=1, uptime=9, all_reduce=allreduce(2000, 1.0, 10)), "uptime went backwards"),
        (report(seq=1, uptime=11), "an operation vanished"),
        (report(seq=1, uptime=11, all_reduce=OpReport(2000, 5000.0, 1.5, 11, 4)), "bus > 2x"),
        (report(seq=1, uptime=11, all_reduce=allreduce(10**15, 1.5, 11)), "1 PB in a second"),
        (report(seq=1, uptime=11, all_reduce=allreduce(2000, 1e6, 11)), "a million seconds"),
        (report(seq=1, uptime=11, all_reduce=allreduce(2000, 1.5, 10**9)), "10^9 calls"),
        (report(seq=1, uptime=5000, all_reduce=allreduce(2000, 1.5, 11)), "clock runs ahead"),
        (report(seq=1, uptime=11, dropped=3, all_reduce=allreduce(2000, 1.5, 11)), None),
    ],
)
def test_implausible_reports_are_rejected_whole(agg, clock, second, why):
    agg.ingest(101, POD_A, report(seq=0, all_reduce=allreduce(1000, 1.0, 10)))
    clock.now += 1
    result = agg.ingest(101, POD_A, second)
    if why is None:  # the control case: a plausible successor is accepted
        assert result is None
        return
    assert result == "implausible", why
    assert only(agg.snapshot()).bytes == 1000
    assert agg.snapshot().rejected["implausible"] == 1


def test_a_first_report_claiming_months_of_uptime_is_rejected(agg):
    assert agg.ingest(101, POD_A, report(uptime=1e9, all_reduce=allreduce(1, 1.0, 1))) == (
        "implausible"
    )
    assert agg.snapshot().operations == ()


def test_series_and_streams_are_capped(clock):
    agg = CollectiveAggregator(
        AggregatorLimits(max_series=2, max_streams=3, max_streams_per_pid=2), clock=clock
    )
    assert agg.ingest(1, POD_A, report(instance="a1", all_reduce=allreduce(1, 1, 1))) is None
    assert agg.ingest(1, POD_A, report(instance="a2", barrier=OpReport(0, 0.0, 1, 1, 1))) is None
    # A third operation would make a third series.
    assert agg.ingest(2, POD_B, report(all_reduce=allreduce(1, 1, 1))) == "too_many_series"
    # A third stream of one pid.
    assert agg.ingest(1, POD_A, report(instance="a3", all_reduce=allreduce(1, 1, 1))) == (
        "too_many_series"
    )
    assert agg.ingest(3, POD_A, report(instance="c1", all_reduce=allreduce(1, 1, 1))) is None
    # Streams full (3): a closed stream past its TTL makes room.
    assert agg.ingest(4, POD_A, report(all_reduce=allreduce(1, 1, 1))) == "too_many_series"
    agg.connection_closed(3, ["c1"])
    clock.now += agg.limits.stream_ttl_s + 1
    assert agg.ingest(4, POD_A, report(uptime=10, all_reduce=allreduce(1, 1, 1))) is None
    assert agg.snapshot().rejected["too_many_series"] == 3


def test_a_reconnecting_probe_continues_its_stream(agg, clock):
    agg.ingest(101, POD_A, report(seq=0, all_reduce=allreduce(1000, 1.0, 1)))
    agg.connection_closed(101, ["aa"])
    clock.now += 30
    agg.ingest(101, POD_A, report(seq=30, uptime=40, all_reduce=allreduce(1500, 1.5, 2)))
    assert only(agg.snapshot()).bytes == 1500  # not 2500: the stream was remembered


def test_retain_pods_forgets_the_others_after_the_grace_period(agg, clock):
    agg.ingest(1, POD_A, report(all_reduce=allreduce(1, 1, 1)))
    agg.ingest(2, POD_B, report(all_reduce=allreduce(7, 1, 1)))
    # Matched on namespace, name and UID: another container of pod A keeps it.
    only_a = {PodRef("ml", "train-a", "sidecar", "uid-a")}
    agg.retain_pods(only_a)
    # B's last report (sent as its processes exit) is still there for the next scrape.
    assert only(agg.snapshot(), pod=POD_B).bytes == 7
    clock.now += agg.limits.departed_grace_s - 1
    agg.retain_pods(only_a)
    assert only(agg.snapshot(), pod=POD_B).bytes == 7
    clock.now += 1
    agg.retain_pods(only_a)
    snapshot = agg.snapshot()
    assert {o.pod for o in snapshot.operations} == {POD_A}
    assert {p.pod for p in snapshot.pods} == {POD_A}
    # B's stream is gone too: B's next report counts from its full totals again.
    agg.ingest(2, POD_B, report(seq=1, uptime=11, all_reduce=allreduce(5, 1, 1)))
    assert only(agg.snapshot(), pod=POD_B).bytes == 5


def test_a_pod_seen_again_within_the_grace_period_is_kept(agg, clock):
    agg.ingest(2, POD_B, report(all_reduce=allreduce(7, 1, 1)))
    agg.retain_pods(set())  # the API server missed it for a moment
    clock.now += agg.limits.departed_grace_s - 1
    agg.retain_pods({POD_B})
    clock.now += 2
    agg.retain_pods({POD_B})
    assert only(agg.snapshot(), pod=POD_B).bytes == 7


def test_a_reused_pid_in_another_pod_starts_a_new_stream(agg, clock):
    agg.ingest(7, POD_A, report(all_reduce=allreduce(1000, 1, 1)))
    clock.now += 1
    agg.ingest(7, POD_B, report(seq=1, uptime=11, all_reduce=allreduce(300, 1, 1)))
    assert only(agg.snapshot(), pod=POD_B).bytes == 300
    assert only(agg.snapshot(), pod=POD_A).bytes == 1000


def test_a_dropped_count_going_backwards_is_implausible(agg, clock):
    agg.ingest(1, POD_A, report(seq=0, dropped=4, all_reduce=allreduce(1, 1, 1)))
    clock.now += 1
    assert agg.ingest(
        1, POD_A, report(seq=1, uptime=11, dropped=3, all_reduce=allreduce(1, 1, 1))
    ) == ("implausible")


def test_dropped_reports_add_up_per_pod(agg, clock):
    agg.ingest(1, POD_A, report(seq=0, dropped=2, all_reduce=allreduce(1, 1, 1)))
    clock.now += 1
    agg.ingest(1, POD_A, report(seq=4, uptime=11, dropped=5, all_reduce=allreduce(1, 1, 1)))
    agg.ingest(2, POD_A, report(seq=0, dropped=1, all_reduce=allreduce(1, 1, 1)))
    assert agg.snapshot().pods[0].dropped_reports == 6
