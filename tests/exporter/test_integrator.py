"""Counters integrate sampled usage exactly, whatever the scrape interval."""

import pytest

from exporter.attribution import Attribution
from exporter.integrator import UsageIntegrator
from exporter.model import DeviceSnapshot
from exporter.pod_usage import split_by_pod
from tests.exporter.devices import GIB, assign, h100, pod


def snap(t, *gpus):
    return DeviceSnapshot(timestamp=t, monotonic=t, source="nvml", gpus=gpus)


def run(integrator, readings, attribution=None):
    totals = None
    attribution = attribution or Attribution()
    for t, gpu in readings:
        s = snap(t, gpu)
        totals = integrator.update(s, split_by_pod(s.gpus, attribution))
    return totals


def test_busy_seconds_is_the_integral_of_utilization():
    integrator = UsageIntegrator()
    utils = [0.0, 1.0, 0.5, 0.25, 0.0, 1.0]
    totals = run(integrator, [(float(t), h100(0, utilization=u)) for t, u in enumerate(utils)])
    gpu = totals.gpus[h100(0).uuid]
    # The first sample opens the window; each later one credits its own period.
    assert gpu.busy_seconds == pytest.approx(sum(utils[1:]))
    assert gpu.sampled_seconds == pytest.approx(len(utils) - 1)


def test_uneven_sample_periods_are_weighted_by_their_length():
    integrator = UsageIntegrator()
    readings = [
        (0.0, h100(0, utilization=1.0)),
        (0.5, h100(0, utilization=1.0)),
        (3.0, h100(0, utilization=0.2)),
    ]
    totals = run(integrator, readings)
    assert totals.gpus[h100(0).uuid].busy_seconds == pytest.approx(0.5 * 1.0 + 2.5 * 0.2)


def test_a_gap_longer_than_max_gap_is_not_credited():
    integrator = UsageIntegrator(max_gap_s=10)
    readings = [
        (0.0, h100(0, utilization=1.0)),
        (1.0, h100(0, utilization=1.0)),
        (100.0, h100(0, utilization=1.0)),
    ]
    totals = run(integrator, readings)
    assert totals.gpus[h100(0).uuid].busy_seconds == pytest.approx(1.0)
    assert totals.gpus[h100(0).uuid].sampled_seconds == pytest.approx(1.0)


def test_pod_counters_follow_the_pod_and_outlive_it_by_the_grace_period():
    integrator = UsageIntegrator(departed_grace_s=30)
    gpu = h100(0, utilization=0.5, memory_used_bytes=2 * GIB, energy_joules=100.0)
    held = Attribution(devices=assign(gpu.uuid, pod("a")))
    totals = run(
        integrator,
        [
            (0.0, gpu),
            (1.0, h100(0, utilization=0.5, memory_used_bytes=2 * GIB, energy_joules=150.0)),
        ],
        held,
    )
    (key, pod_totals) = next(iter(totals.pods.items()))
    assert key.pod == "a"
    assert pod_totals.allocated_seconds == pytest.approx(1.0)
    assert pod_totals.busy_seconds == pytest.approx(0.5)
    assert pod_totals.memory_byte_seconds == pytest.approx(2 * GIB)
    assert pod_totals.energy_joules == pytest.approx(50.0)
    # The pod lets go: its counters stay, frozen, so that a scrape every 15-60 s
    # still reads the last period it was credited.
    totals = run(integrator, [(2.0, gpu)], Attribution())
    assert totals.pods == {}
    assert totals.departed[key].allocated_seconds == pytest.approx(1.0)
    totals = run(integrator, [(31.0, gpu)], Attribution())
    assert totals.departed[key].allocated_seconds == pytest.approx(1.0)
    totals = run(integrator, [(32.0, gpu)], Attribution())
    assert totals.departed == {}


def test_a_pod_keeps_a_departed_device_series_while_it_holds_another():
    # A pod's counters go together: the sum over its devices stays a counter.
    integrator = UsageIntegrator(departed_grace_s=30)
    gpu0, gpu1 = h100(0, utilization=1.0), h100(1, utilization=1.0)
    both = Attribution(devices=assign(gpu0.uuid, pod("a")) | assign(gpu1.uuid, pod("a")))
    only_gpu0 = Attribution(devices=assign(gpu0.uuid, pod("a")))

    def step(t, attribution):
        s = DeviceSnapshot(timestamp=t, monotonic=t, source="nvml", gpus=(gpu0, gpu1))
        return integrator.update(s, split_by_pod(s.gpus, attribution))

    step(0.0, both)
    step(1.0, both)
    totals = step(100.0, only_gpu0)  # GPU 1 went long ago, the pod is still on GPU 0
    assert [k.uuid for k in totals.departed] == [gpu1.uuid]
    totals = step(200.0, Attribution())  # now the pod is gone: its series go together
    assert {k.uuid for k in totals.departed} == {gpu0.uuid, gpu1.uuid}
    totals = step(240.0, Attribution())
    assert totals.departed == {}


def test_past_the_series_room_the_pods_that_left_first_go_first():
    integrator = UsageIntegrator(departed_grace_s=300)
    gpus = [h100(i, utilization=1.0) for i in range(4)]
    names = ["a", "b", "c", "d"]

    def step(t, held, room=None):
        devices = {}
        for i in held:
            devices |= assign(gpus[i].uuid, pod(names[i]))
        s = DeviceSnapshot(timestamp=t, monotonic=t, source="nvml", gpus=tuple(gpus))
        return integrator.update(s, split_by_pod(s.gpus, Attribution(devices=devices)), room)

    step(0.0, [0, 1, 2, 3])
    step(1.0, [1, 2, 3])  # a leaves first
    step(2.0, [2, 3])  # then b
    totals = step(3.0, [3], room=3)  # c leaves too: three departed fit in a room of 3
    assert {k.pod for k in totals.departed} == {"a", "b", "c"}
    assert integrator.expired_early == 0
    totals = step(4.0, [3], room=1)  # the room shrinks (more live pods elsewhere, say)
    assert {k.pod for k in totals.departed} == {"c"}
    assert integrator.expired_early == 2


def test_the_series_room_never_splits_a_pod_that_still_holds_a_device():
    integrator = UsageIntegrator(departed_grace_s=300)
    gpu0, gpu1 = h100(0, utilization=1.0), h100(1, utilization=1.0)
    both = Attribution(devices=assign(gpu0.uuid, pod("a")) | assign(gpu1.uuid, pod("a")))
    s = DeviceSnapshot(timestamp=0.0, monotonic=0.0, source="nvml", gpus=(gpu0, gpu1))
    integrator.update(s, split_by_pod(s.gpus, both))
    only_gpu0 = Attribution(devices=assign(gpu0.uuid, pod("a")))
    s = DeviceSnapshot(timestamp=1.0, monotonic=1.0, source="nvml", gpus=(gpu0, gpu1))
    totals = integrator.update(s, split_by_pod(s.gpus, only_gpu0), departed_room=0)
    assert [k.uuid for k in totals.departed] == [gpu1.uuid]  # kept: a is still live
    assert integrator.expired_early == 0


def test_a_pod_back_within_the_grace_period_continues_its_counters():
    integrator = UsageIntegrator(departed_grace_s=30)
    gpu = h100(0, utilization=1.0)
    held = Attribution(devices=assign(gpu.uuid, pod("a")))
    run(integrator, [(0.0, gpu), (1.0, gpu)], held)
    run(integrator, [(2.0, gpu)], Attribution())
    totals = run(integrator, [(3.0, gpu)], held)
    (pod_totals,) = totals.pods.values()
    # Credited for 0-1 s and 2-3 s (the sample at 2 s did not show it), from one total.
    assert pod_totals.allocated_seconds == pytest.approx(2.0)
    assert totals.departed == {}


def test_energy_counter_reset_is_not_negative_usage():
    integrator = UsageIntegrator()
    held = Attribution(devices=assign(h100(0).uuid, pod("a")))
    readings = [
        (0.0, h100(0, energy_joules=500.0)),
        (1.0, h100(0, energy_joules=10.0)),
        (2.0, h100(0, energy_joules=30.0)),
    ]
    totals = run(integrator, readings, held)
    assert next(iter(totals.pods.values())).energy_joules == pytest.approx(20.0)


def test_gpu_without_energy_counter_integrates_power():
    integrator = UsageIntegrator()
    readings = [(float(t), h100(0, energy_joules=None, power_watts=200.0)) for t in range(4)]
    totals = run(integrator, readings)
    assert totals.gpus[h100(0).uuid].integrated_energy_joules == pytest.approx(600.0)
