"""Where a rank learns its place, and how the spawner names the rank at fault."""

import json
import signal
from pathlib import Path

import pytest

from loadgen.distributed import _root_cause, from_env, report_path
from loadgen.errors import ConfigError


def test_nothing_launched_this_process() -> None:
    assert from_env({}) is None


def test_torchrun_variables() -> None:
    env = from_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node-0",
            "MASTER_PORT": "29400",
            "TORCHELASTIC_RUN_ID": "x",
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "TORCHELASTIC_RESTART_COUNT": "2",
        }
    )
    assert env is not None
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 8, 1, 2)
    assert env.launcher == "torchrun" and env.agent_store and env.store_prefix == "loadgen/2"
    assert (env.master_addr, env.master_port) == ("node-0", 29400)


def test_kubernetes_indexed_job_rank_from_completion_index() -> None:
    env = from_env({"JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "lg-0.lg"})
    assert env is not None and env.rank == 1 and env.launcher == "kubernetes"
    assert not env.agent_store and env.local_rank == 0 and env.local_world_size == 1


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "a"}, "neither RANK nor JOB_COMPLETION_INDEX"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "a"}, "need 0 <= RANK < WORLD_SIZE"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not a whole number"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "needs MASTER_ADDR"),
    ],
)
def test_bad_launcher_variables(variables: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_env(variables)


def _report(folder: Path, rank: int, ts: float, error: str, root: bool, culprit: int) -> None:
    report = {"rank": rank, "ts": ts, "error": error, "root": root, "culprit": culprit}
    report_path(str(folder), rank).write_text(json.dumps(report))


def test_root_cause_prefers_the_rank_that_failed_first_on_its_own(tmp_path: Path) -> None:
    _report(tmp_path, 0, 1.0, "rank 1 failed: boom (rank 0: ...)", False, 1)
    _report(tmp_path, 1, 2.0, "rank 1 crashed", True, 1)
    error = _root_cause(str(tmp_path), [1, 1], first=0)
    assert str(error) == "rank 1 crashed" and error.rank == 1


def test_root_cause_names_a_rank_that_died_silently(tmp_path: Path) -> None:
    _report(tmp_path, 0, 1.0, "a peer rank failed; rank 0: ...", False, None)
    error = _root_cause(str(tmp_path), [1, -signal.SIGKILL, -signal.SIGTERM], first=0)
    assert error.rank == 1 and "rank 1 was killed by signal SIGKILL" in str(error)


def test_root_cause_falls_back_to_the_first_peer_report(tmp_path: Path) -> None:
    _report(tmp_path, 0, 1.0, "rank 1 stopped responding: ...", False, 1)
    error = _root_cause(str(tmp_path), [1, -signal.SIGTERM], first=0)
    assert error.rank == 1 and str(error).startswith("rank 1 stopped responding")


def _watch(rank: int, world: int = 3, **kwargs):
    from torch.distributed import HashStore

    from loadgen.distributed import PeerWatch

    return PeerWatch(HashStore(), rank, world, rank0_hosts_store=kwargs.get("rank0", True))


def _share(a, b) -> None:
    b.store = a.store  # ranks of one job read and write one store


def test_a_failed_peer_is_named_from_its_note() -> None:
    me, peer = _watch(0), _watch(2)
    _share(me, peer)
    me.progress("p", 5)
    peer.failed("rank 2 crashed, as phase 'p' (crash) asked")
    error = me.explain(RuntimeError("Connection closed by peer [10.0.0.2]:1234"), "all_reduce")
    assert error.rank == 2
    assert str(error).startswith("rank 2 crashed")
    assert "rank 0: all_reduce failed in phase 'p' at step 5" in str(error)


def test_a_silent_peer_is_named_from_its_progress() -> None:
    me, behind, level = _watch(0), _watch(1), _watch(2)
    _share(me, behind)
    _share(me, level)
    behind.progress("p", 4)
    level.progress("p", 5)
    me.progress("p", 5)
    gloo = RuntimeError(
        "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv"
    )
    error = me.explain(gloo, "all_reduce")
    assert error.rank == 1
    assert str(error).startswith("rank 1 stopped responding: its last step was 4")
    assert "Timed out waiting 3000ms" in str(error) and "unbound_buffer" not in str(error)
    gone = me.explain(RuntimeError("Connection reset by peer"), "all_reduce")
    assert str(gone).startswith("rank 1 went away")


class _GoneStore:
    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise RuntimeError("Connection refused")

        return fail


def test_an_unreadable_store_means_its_host_is_gone() -> None:
    watch = _watch(1)
    watch.store = _GoneStore()
    error = watch.explain(RuntimeError("Connection closed by peer"), "barrier")
    assert error.rank == 0 and str(error).startswith("rank 0 is gone")
    # Under torchrun the agent hosts the store: its loss says nothing about rank 0.
    agent = _watch(1, rank0=False)
    agent.store = _GoneStore()
    error = agent.explain(RuntimeError("Connection closed by peer"), "barrier")
    assert error.rank is None and str(error).startswith("a peer rank failed")
