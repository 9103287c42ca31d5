"""NvmlSource with the real pynvml where no NVIDIA driver is installed, and the XID
watcher's handle matching with pynvml's real ctypes handles."""

from __future__ import annotations

import ctypes
import ctypes.util

import pynvml
import pytest

from exporter.sources.nvml import NvmlSource, NvmlUnavailable
from exporter.sources.xid_events import handle_key


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver"
)
def test_real_pynvml_without_a_driver_says_what_to_do() -> None:
    with pytest.raises(NvmlUnavailable) as raised:
        NvmlSource()  # imports the real pynvml
    message = str(raised.value)
    assert "LibraryNotFound" in message
    assert "GPU node" in message and "--simulated" in message


def test_handle_key_matches_two_pynvml_pointers_to_one_device() -> None:
    # Event data carries a new pointer object to the same device as the registered
    # handle: they must be recognised as one GPU, and told apart from another.
    device, other = pynvml.struct_c_nvmlDevice_t(), pynvml.struct_c_nvmlDevice_t()
    registered = ctypes.pointer(device)
    from_event = pynvml.c_nvmlDevice_t(device)
    assert registered is not from_event
    assert handle_key(registered) == handle_key(from_event)
    assert handle_key(ctypes.pointer(other)) != handle_key(registered)
