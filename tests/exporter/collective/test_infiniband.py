"""InfiniBand/RoCE counters from a fixture sysfs tree laid out as the kernel does."""

import os

from exporter.collective.infiniband import IbPortCounters, read_infiniband


def make_port(sys_root, device, port, *, xmit=None, rcv=None, link_layer="InfiniBand", pci=None):
    """One port of one RDMA device under sys_root, as /sys/class/infiniband shows it."""
    device_dir = os.path.join(sys_root, "class", "infiniband", device)
    port_dir = os.path.join(device_dir, "ports", str(port))
    os.makedirs(os.path.join(port_dir, "counters"), exist_ok=True)
    with open(os.path.join(port_dir, "link_layer"), "w") as f:
        f.write(link_layer + "\n")
    for name, value in (("port_xmit_data", xmit), ("port_rcv_data", rcv)):
        if value is not None:
            with open(os.path.join(port_dir, "counters", name), "w") as f:
                f.write(f"{value}\n")
    if pci and not os.path.islink(os.path.join(device_dir, "device")):
        pci_dir = os.path.join(sys_root, "devices", "pci0000:00", pci)
        os.makedirs(pci_dir, exist_ok=True)
        os.symlink(os.path.relpath(pci_dir, device_dir), os.path.join(device_dir, "device"))


def test_port_data_counters_are_words_of_four_bytes(tmp_path):
    root = str(tmp_path)
    make_port(root, "mlx5_0", 1, xmit=1_000_000, rcv=250, pci="0000:3b:00.0")
    make_port(root, "mlx5_1", 1, xmit=2**40, rcv=0, link_layer="Ethernet", pci="0000:86:00.1")
    assert read_infiniband(root) == [
        IbPortCounters("mlx5_0", 1, 4_000_000, 1000, "InfiniBand", "0000:3b:00.0"),
        IbPortCounters("mlx5_1", 1, 2**42, 0, "Ethernet", "0000:86:00.1"),
    ]


def test_missing_or_garbled_counters_read_as_none(tmp_path, caplog):
    root = str(tmp_path)
    make_port(root, "mlx5_2", 1, xmit="garbage", rcv=8)
    make_port(root, "mlx5_2", 2)  # a port without counters (not linked up yet)
    make_port(root, "mlx5_2", 10, xmit=1, rcv=1)
    os.makedirs(os.path.join(root, "class", "infiniband", "mlx5_2", "ports", "lost+found"))
    ports = read_infiniband(root)
    assert [(p.port, p.xmit_bytes, p.rcv_bytes) for p in ports] == [
        (1, None, 32),
        (2, None, None),
        (10, 4, 4),  # ports in numeric order, not 1, 10, 2
    ]
    assert ports[0].pci_address == ""
    assert "is not a number" in caplog.text


def test_a_node_without_rdma_devices_has_no_ports(tmp_path):
    assert read_infiniband(str(tmp_path)) == []
