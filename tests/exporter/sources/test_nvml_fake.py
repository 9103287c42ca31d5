"""The fake pynvml may not invent API: every function it offers exists in the installed
pynvml with the same parameters, and its constants and errors are pynvml's own."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from tests.fakes.fake_pynvml import FakeNvml, make_fake_pynvml


def fake_functions() -> dict[str, object]:
    fake = make_fake_pynvml(1)
    return {
        name: getattr(fake, name)
        for name in dir(fake)
        if name.startswith("nvml") and inspect.ismethod(getattr(fake, name))
    }


def test_the_fake_offers_enough_functions_to_be_checked() -> None:
    assert len(fake_functions()) >= 30


@pytest.mark.parametrize("name", sorted(fake_functions()))
def test_each_fake_function_exists_in_pynvml_with_the_same_parameters(name: str) -> None:
    real = getattr(pynvml, name, None)
    assert callable(real), f"{name} is not in pynvml {pynvml.__name__}"
    fake_parameters = list(inspect.signature(fake_functions()[name]).parameters)
    real_parameters = list(inspect.signature(real).parameters)
    assert fake_parameters == real_parameters


def test_constants_and_error_classes_are_pynvml_s() -> None:
    copied = [name for name in vars(FakeNvml) if name.startswith(("NVML", "nvml", "c_nvml"))]
    constants = [n for n in copied if not inspect.isfunction(vars(FakeNvml)[n])]
    assert len(constants) > 500
    for name in constants:
        assert getattr(FakeNvml, name) is getattr(pynvml, name), name
    assert FakeNvml.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    assert FakeNvml.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost


def test_nothing_answers_before_init() -> None:
    fake = make_fake_pynvml(1)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_handles_are_stable_and_opaque() -> None:
    fake = make_fake_pynvml(1)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetHandleByIndex(0) is handle
    assert not [a for a in dir(handle) if not a.startswith("_")]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetPowerUsage("not a handle")


def test_process_utilization_returns_only_newer_samples_else_not_found() -> None:
    fake = make_fake_pynvml(1)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetProcessUtilization(handle, 0)
    first = fake.add_process_sample(0, pid=1, sm=10, mem=1)
    fake.advance(1)
    fake.add_process_sample(0, pid=1, sm=20, mem=2)
    newer = fake.nvmlDeviceGetProcessUtilization(handle, first)
    assert [s.smUtil for s in newer] == [20]


def test_event_wait_times_out_without_events() -> None:
    fake = make_fake_pynvml(1)
    fake.nvmlInit()
    event_set = fake.nvmlEventSetCreate()
    with pytest.raises(pynvml.NVMLError_Timeout):
        fake.nvmlEventSetWait_v2(event_set, 1)


def test_a_lost_gpu_answers_gpu_is_lost_and_old_handles_stay_dead() -> None:
    fake = make_fake_pynvml(1)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.make_lost(0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetHandleByIndex(0)
    fake.recover(0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetPowerUsage(handle)
    assert fake.nvmlDeviceGetPowerUsage(fake.nvmlDeviceGetHandleByIndex(0)) == 70_000
