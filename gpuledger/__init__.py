"""gpuledger: observability and cost accounting for GPU clusters on Kubernetes.

This package holds only what every part shares and what must import without heavy
dependencies: the version, the command line, structured logging, and the in-job
collective probe (`gpuledger.probe`).
"""

__version__ = "0.1.0"
