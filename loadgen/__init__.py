"""The load generator: real training steps shaped into phases, with a known timeline.

`gpuledger loadgen` trains a GPT-style decoder (`model`) on synthetic tokens (`data`)
with AdamW, in one process or many (`distributed`: torchrun, Kubernetes, or its own
`--nproc` spawner), through the phases of a profile (`profile`, `phases`): steady,
idle, memory ramp, communication, straggler, input stall, hang and crash. Every step
is timed (`trainer`) and written to a JSON Lines timeline (`timeline`, the ground
truth that calibration reads), exported as Prometheus metrics (`metrics`), and shown
on a progress line and a summary table (`progress`). `flops` holds the MFU formula and
the device peaks; `runner` checks a run before it starts and runs it; `cli` is the
subcommand.
"""
