"""Ranks: where they come from, how they meet, and how a failed one is named.

A rank learns its place from the environment that torchrun, the Kubeflow training
operator or a Kubernetes indexed Job gives it (RANK or JOB_COMPLETION_INDEX,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK), or from `spawn`, the load
generator's own `--nproc N` launcher for one machine.

Every rank notes its progress (phase and step) in the rendezvous store. When a
collective fails, because a peer crashed or stopped answering (found by the
process group's timeout), the rank reads those notes to say which peer it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError, PeerFailed, RunFailed

log = logging.getLogger("gpuledger.loadgen")


@dataclass(frozen=True)
class DistEnv:
    """One rank's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # single, spawn, torchrun, kubernetes
    agent_store: bool = False  # torchrun's agent hosts the store; ranks are its clients
    store_prefix: str = "loadgen"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], key: str) -> int | None:
    if key not in env or env[key] == "":
        return None
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(
            f"environment variable {key}={env[key]!r} is not a whole number"
        ) from None


def from_env(env: Mapping[str, str] | None = None) -> DistEnv | None:
    """The rank's place from launcher variables, or None when nothing launched it."""
    env = os.environ if env is None else env
    world = _int(env, "WORLD_SIZE")
    if world is None:
        return None
    rank = _int(env, "RANK")
    if rank is None:
        rank = _int(env, "JOB_COMPLETION_INDEX")  # Kubernetes indexed Job
    if rank is None:
        raise ConfigError("WORLD_SIZE is set but neither RANK nor JOB_COMPLETION_INDEX is")
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} and WORLD_SIZE {world}: need 0 <= RANK < WORLD_SIZE")
    if world > 1 and not env.get("MASTER_ADDR"):
        raise ConfigError(
            "WORLD_SIZE > 1 needs MASTER_ADDR (and MASTER_PORT): where rank 0 listens"
        )
    torchrun = "TORCHELASTIC_RUN_ID" in env
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=_int(env, "LOCAL_RANK") or 0,
        local_world_size=_int(env, "LOCAL_WORLD_SIZE") or 1,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT") or 29500,
        launcher="torchrun" if torchrun else "kubernetes",
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
        store_prefix=f"loadgen/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}",
    )


def init_process_group(
    env: DistEnv, backend: str, collective_timeout_s: float, init_timeout_s: float
) -> Any:
    """Join the process group; returns the store for progress notes (PrefixStore)."""
    import torch.distributed as dist

    store = dist.TCPStore(
        env.master_addr,
        env.master_port,
        env.world_size,
        is_master=env.rank == 0 and not env.agent_store,
        timeout=timedelta(seconds=init_timeout_s),
    )
    # The timeout bounds every collective of the group: gloo raises in the caller; NCCL's
    # watchdog aborts the communicator (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default
    # since torch 2.2). Either way a hung peer is found after collective_timeout_s.
    dist.init_process_group(
        backend,
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=collective_timeout_s),
    )
    return dist.PrefixStore(env.store_prefix, store)


class PeerWatch:
    """Progress and failure notes of every rank, kept in the rendezvous store."""

    def __init__(self, store: Any, rank: int, world_size: int, *, rank0_hosts_store: bool) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.rank0_hosts_store = rank0_hosts_store
        self.phase, self.step = "", -1

    def progress(self, phase: str, step: int) -> None:
        self.phase, self.step = phase, step
        self.store.set(f"progress/{self.rank}", json.dumps([phase, step, time.time()]))

    def failed(self, message: str) -> None:
        """Leave a note that this rank failed and why (best effort: the store may be gone)."""
        try:
            self.store.set(f"failed/{self.rank}", json.dumps([message, time.time()]))
        except Exception:
            log.debug("could not leave a failure note", exc_info=True)

    def explain(self, error: BaseException, what: str) -> PeerFailed:
        """Turn a failed collective into an error that names the peer at fault."""
        detail = _first_line(error)
        where = f"rank {self.rank}: {what} failed in phase {self.phase!r} at step {self.step}"
        try:
            self.store.set_timeout(timedelta(seconds=5))
            others = [r for r in range(self.world_size) if r != self.rank]
            for r in others:
                if self.store.check([f"failed/{r}"]):
                    message, _ = json.loads(self.store.get(f"failed/{r}"))
                    if not message.startswith(f"rank {r} "):
                        message = f"rank {r} failed: {message}"
                    return PeerFailed(f"{message} ({where}: {detail})", rank=r)
            notes = {
                r: json.loads(self.store.get(f"progress/{r}"))
                if self.store.check([f"progress/{r}"])
                else ["", -1, time.time()]  # it never began a step
                for r in others
            }
        except Exception:
            if self.rank != 0 and self.rank0_hosts_store:
                # Rank 0 hosts the store: if it cannot be read, rank 0 is gone.
                return PeerFailed(
                    f"rank 0 is gone (its store does not answer); {where}: {detail}", 0
                )
            return PeerFailed(f"a peer rank failed; {where}: {detail}")
        behind = {r: n for r, n in notes.items() if n[1] < self.step}
        if behind:
            r = min(behind, key=lambda k: behind[k][1])
            phase, step, ts = behind[r]
            # A timeout means the peer is there but silent; anything else, that it left.
            timed_out = "timed out" in detail.lower() or "timeout" in detail.lower()
            how = "stopped responding" if timed_out else "went away"
            return PeerFailed(
                f"rank {r} {how}: its last step was {step} (phase {phase!r}) "
                f"{time.time() - ts:.1f} s ago, while rank {self.rank} reached step "
                f"{self.step} ({where}: {detail})",
                rank=r,
            )
        return PeerFailed(f"a peer rank failed or stopped responding; {where}: {detail}")


def _first_line(error: BaseException) -> str:
    """The gist of a backend error: its first line without gloo's source location."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return line.split(". ")[0].rstrip(".")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def report_path(folder: str, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.json"


def _child(index: int, target: Callable, config: Any, nproc: int, port: int, folder: str) -> None:
    """Entry point of a spawned rank: set the launcher's variables, run, report."""
    os.environ.update(
        RANK=str(index),
        WORLD_SIZE=str(nproc),
        LOCAL_RANK=str(index),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    env = from_env()
    assert env is not None
    env = DistEnv(**{**env.__dict__, "launcher": "spawn"})
    try:
        target(config, env)
    except BaseException as e:  # report, then exit non-zero so the spawner stops the rest
        culprit = e.rank if isinstance(e, RunFailed) else index
        report = {
            "rank": index,
            "ts": time.time(),
            "error": str(e) or type(e).__name__,
            "root": not isinstance(e, PeerFailed),
            "culprit": culprit,
        }
        report_path(folder, index).write_text(json.dumps(report))
        if not isinstance(e, RunFailed):
            log.exception("rank %d failed", index)
        raise SystemExit(1) from None


def spawn(nproc: int, target: Callable[[Any, DistEnv], None], config: Any) -> None:
    """Run `target(config, env)` in `nproc` local ranks; raise RunFailed naming the rank
    at fault if any fails (the others are stopped)."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="loadgen-") as folder:
        context = mp.start_processes(
            _child,
            args=(target, config, nproc, port, folder),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join(grace_period=3.0):
                pass
        except ProcessException as e:
            codes = [process.exitcode for process in context.processes]
            raise _root_cause(folder, codes, e.error_index) from None
        except KeyboardInterrupt:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            raise


def _root_cause(folder: str, exit_codes: list[int | None], first: int) -> RunFailed:
    """The failure that was not a consequence of another (a peer's collective error).

    `exit_codes` are the ranks' exit codes after the spawner stopped them (negative:
    a signal); `first` is the rank whose exit the spawner saw first.
    """
    reports = [
        json.loads(p.read_text())
        for r in range(len(exit_codes))
        if (p := report_path(folder, r)).exists()
    ]
    reports.sort(key=lambda r: r["ts"])
    roots = [r for r in reports if r["root"]]
    if roots:
        root = roots[0]
        said = root["error"]
        message = (
            said if said.startswith(f"rank {root['rank']} ") else f"rank {root['rank']}: {said}"
        )
        return RunFailed(message, rank=root["culprit"])
    # Ranks that died without a word (os._exit, a signal, the OOM killer); SIGTERM is
    # how the spawner stops the others, so those exits are consequences.
    reported = {r["rank"] for r in reports}
    silent = [
        r
        for r, code in enumerate(exit_codes)
        if r not in reported and code not in (0, None, -signal.SIGTERM)
    ]
    if silent:
        rank = first if first in silent else silent[0]
        code = exit_codes[rank]
        assert code is not None
        how = (
            f"was killed by signal {signal.Signals(-code).name}"
            if code < 0
            else f"exited with code {code}"
        )
        return RunFailed(f"rank {rank} {how} without reporting an error", rank=rank)
    if reports:
        return RunFailed(reports[0]["error"], rank=reports[0]["culprit"])
    return RunFailed(f"rank {first} failed with exit code {exit_codes[first]}", rank=first)
