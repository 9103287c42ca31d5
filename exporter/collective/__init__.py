"""Collective (NCCL) throughput per pod, NCCL Inspector files and link counters.

- `server.CollectiveServer`: the unix socket the in-job probes (`gpuledger.probe`)
  report to; the sender comes from SO_PEERCRED, never from the message.
- `aggregator.CollectiveAggregator`: per pod and operation totals, ranks summed.
- `inspector.InspectorReader`: NCCL Inspector's Prometheus files, re-labelled by pod.
- `infiniband.read_infiniband`: InfiniBand/RoCE port counters from sysfs.
- `links.LinkAttributor`: NVLink, PCIe and InfiniBand bytes attributed to pods.
- `collector.CollectiveCollector`: the prometheus_client collector of all the above.

The wire format is `gpuledger.probe_wire`, shared with the probe.
"""
