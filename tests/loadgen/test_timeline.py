import json
import multiprocessing
from pathlib import Path

from loadgen import timeline
from loadgen.timeline import TimelineWriter


def _append(path: str, rank: int, n: int) -> None:
    writer = TimelineWriter(path, rank=rank, job="j")
    for i in range(n):
        writer.write("step", phase="p", step=i, padding="x" * 2000)
    writer.close()


def test_ranks_sharing_a_file_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    TimelineWriter(path, rank=0, job="j", truncate=True).close()
    procs = [multiprocessing.Process(target=_append, args=(str(path), r, 300)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    records = [json.loads(line) for line in lines]  # every line whole
    for rank in (0, 1):
        assert [r["step"] for r in records if r["rank"] == rank] == list(range(300))


def test_rank_template_and_read_in_time_order(tmp_path: Path) -> None:
    for rank in (1, 0):
        w = TimelineWriter(tmp_path / "r-{rank}.jsonl", rank=rank, job="j", truncate=True)
        w.write("phase_start", phase="a")
        w.write("phase_end", phase="a", duration_s=1.0)
        w.close()
    records = timeline.read([tmp_path / "r-0.jsonl", tmp_path / "r-1.jsonl"])
    assert [r["rank"] for r in records] == [1, 1, 0, 0]
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert [r["rank"] for r in timeline.phases(records)] == [1, 0]
    assert timeline.phases(records, rank=0)[0]["duration_s"] == 1.0


def test_truncate_starts_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "old", "ts": 0}\n')
    TimelineWriter(path, rank=0, job="j", truncate=True).write("run_start")
    assert [r["type"] for r in timeline.read(path)] == ["run_start"]
