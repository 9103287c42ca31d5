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
