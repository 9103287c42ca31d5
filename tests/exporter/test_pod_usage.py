"""How each device's readings are split between the pods that hold it."""

import pytest

from exporter.attribution import Attribution
from exporter.model import ProcessReading
from exporter.pod_usage import EXCLUSIVE, MIG, SHARED, split_by_pod
from tests.exporter.devices import GIB, assign, h100, mig_gpu, pod


def by_pod(usages):
    return {u.key.pod: u for u in usages}


def test_whole_gpu_held_by_one_pod_gets_all_of_it():
    gpu = h100(0, utilization=0.8, memory_used_bytes=30 * GIB)
    usages = split_by_pod((gpu,), Attribution(devices=assign(gpu.uuid, pod("a"))))
    (usage,) = usages
    assert usage.key.sharing == EXCLUSIVE
    assert usage.allocated == 1.0
    assert usage.utilization == pytest.approx(0.8)
    assert usage.memory_used_bytes == 30 * GIB
    assert usage.energy_share == 1.0


def test_time_sliced_gpu_split_by_sm_samples_and_process_memory():
    processes = (
        ProcessReading(pid=11, used_memory_bytes=4 * GIB, sm_utilization=0.6),
        ProcessReading(pid=12, used_memory_bytes=2 * GIB, sm_utilization=0.2),
        ProcessReading(pid=21, used_memory_bytes=1 * GIB, sm_utilization=0.2),
    )
    gpu = h100(1, utilization=0.9, processes=processes)
    a, b, c = pod("a"), pod("b"), pod("c")
    attribution = Attribution(
        devices=assign(f"{gpu.uuid}::0", a, resource="nvidia.com/gpu.shared")
        | assign(f"{gpu.uuid}::1", b, resource="nvidia.com/gpu.shared")
        | assign(f"{gpu.uuid}::2", c, resource="nvidia.com/gpu.shared"),
        processes={11: a, 12: a, 21: b},
    )
    usages = by_pod(split_by_pod((gpu,), attribution))
    assert {u.key.sharing for u in usages.values()} == {SHARED}
    assert [usages[p].allocated for p in "abc"] == pytest.approx([1 / 3] * 3)
    # 0.8 of the SM samples are a's, 0.2 b's, none c's.
    assert usages["a"].utilization == pytest.approx(0.9 * 0.8)
    assert usages["b"].utilization == pytest.approx(0.9 * 0.2)
    assert usages["c"].utilization == pytest.approx(0.0)
    assert sum(u.utilization for u in usages.values()) == pytest.approx(0.9)
    assert usages["a"].memory_used_bytes == 6 * GIB
    assert usages["b"].memory_used_bytes == 1 * GIB
    assert usages["c"].memory_used_bytes is None
    assert sum(u.energy_share for u in usages.values()) == pytest.approx(1.0)


def test_shared_gpu_without_samples_splits_busy_time_equally():
    gpu = h100(2, utilization=0.6)
    attribution = Attribution(
        devices=assign(gpu.uuid, pod("a"), pod("b"), resource="nvidia.com/gpu.shared")
    )
    usages = split_by_pod((gpu,), attribution)
    assert [u.utilization for u in usages] == pytest.approx([0.3, 0.3])


def test_mig_instances_hold_their_compute_fraction():
    gpu = mig_gpu(3, instances=7)
    devices = {}
    for i, mig in enumerate(gpu.mig):
        devices |= assign(mig.uuid, pod(f"m{i}"), resource="nvidia.com/mig-1g.10gb")
    usages = split_by_pod((gpu,), Attribution(devices=devices))
    assert len(usages) == 7
    assert {u.key.sharing for u in usages} == {MIG}
    assert sum(u.allocated for u in usages) == pytest.approx(1.0)
    first = by_pod(usages)["m0"]
    assert first.key.mig_profile == "1g.10gb"
    assert first.key.gpu_instance == "7"
    assert first.utilization == pytest.approx(0.7 / 7)
    assert first.memory_used_bytes == GIB


def test_unheld_and_lost_gpus_have_no_pod_series():
    held = h100(0)
    lost = h100(1, up=False, error="GPU is lost")
    attribution = Attribution(devices=assign(lost.uuid, pod("x")))
    assert split_by_pod((held, lost), attribution) == []


def test_same_container_listed_twice_counts_once():
    gpu = h100(0)
    p = pod("a")
    attribution = Attribution(devices={gpu.uuid: assign(gpu.uuid, p)[gpu.uuid] * 2})
    (usage,) = split_by_pod((gpu,), attribution)
    assert usage.allocated == 1.0
