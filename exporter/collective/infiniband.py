"""InfiniBand and RoCE port counters from sysfs.

    /sys/class/infiniband/<device>/ports/<port>/counters/port_xmit_data
    /sys/class/infiniband/<device>/ports/<port>/counters/port_rcv_data
    /sys/class/infiniband/<device>/ports/<port>/link_layer      InfiniBand | Ethernet
    /sys/class/infiniband/<device>/device -> ../../../0000:3b:00.0   (the NIC's PCI function)

port_xmit_data and port_rcv_data count 4-byte words (the IBA spec's octets / 4), so
bytes are 4 x the value. HCAs without extended counters stop their 32-bit counters at
2^32 - 1 instead of wrapping; read such a port's bytes as a lower bound.

The PCI address is kept because device plugins name NICs either way: the RDMA shared
device plugin by RDMA device, SR-IOV and host-device plugins by PCI address.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

WORD_BYTES = 4


@dataclass(frozen=True)
class IbPortCounters:
    device: str  # e.g. mlx5_0
    port: int
    xmit_bytes: int | None  # None: the counter is missing or unreadable
    rcv_bytes: int | None
    link_layer: str = ""  # InfiniBand or Ethernet (RoCE)
    pci_address: str = ""  # e.g. 0000:3b:00.0, "" if sysfs does not link it


def read_infiniband(sys_root: str = "/sys") -> list[IbPortCounters]:
    """Every port of every RDMA device under `sys_root`; [] on a node without any."""
    base = os.path.join(sys_root, "class", "infiniband")
    try:
        devices = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []
    ports: list[IbPortCounters] = []
    for device in devices:
        device_dir = os.path.join(base, device)
        try:
            port_names = sorted(os.listdir(os.path.join(device_dir, "ports")), key=_port_order)
        except OSError:
            continue
        pci = _pci_address(device_dir)
        for name in port_names:
            if not name.isdigit():
                continue
            port_dir = os.path.join(device_dir, "ports", name)
            counters = os.path.join(port_dir, "counters")
            ports.append(
                IbPortCounters(
                    device=device,
                    port=int(name),
                    xmit_bytes=_words_as_bytes(os.path.join(counters, "port_xmit_data")),
                    rcv_bytes=_words_as_bytes(os.path.join(counters, "port_rcv_data")),
                    link_layer=_read_text(os.path.join(port_dir, "link_layer")),
                    pci_address=pci,
                )
            )
    return ports


def _port_order(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def _words_as_bytes(path: str) -> int | None:
    text = _read_text(path)
    if not text:
        return None
    try:
        words = int(text)
    except ValueError:
        log.warning("InfiniBand counter %s is not a number: %r", path, text[:40])
        return None
    return words * WORD_BYTES if words >= 0 else None


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(256).strip()
    except OSError:
        return ""


def _pci_address(device_dir: str) -> str:
    try:
        return os.path.basename(os.readlink(os.path.join(device_dir, "device")))
    except OSError:
        return ""
