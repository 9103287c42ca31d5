"""Local services: Prometheus, Alertmanager, VictoriaMetrics, PostgreSQL.

Each is the Debian package's binary, started on a free loopback port in a working
directory, and stopped (with its children) when the `with` block ends. `gpuledger demo`
and `gpuledger calibrate` run the stack with them; the integration tests use them too
(through tests/realservices.py), so no test double stands in for these.

    with Prometheus(tmp_path, scrape_configs=[scrape_job("gpuledger", ["127.0.0.1:9400"])]) as prom:
        prom.wait_until(lambda: prom.query("up") != [])
        prom.query("sum(gpuledger_gpu_up)")

`backfill_openmetrics(text, data_dir)` writes OpenMetrics text into TSDB blocks with
`promtool tsdb create-blocks-from openmetrics`, so weeks of history exist in seconds;
start `Prometheus(workdir, data_dir=data_dir, retention="3650d")` on it afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MissingService(RuntimeError):
    """A service's binary is not installed."""


def require_binary(name: str) -> str:
    """Path of a service binary, or MissingService saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise MissingService(
            f"{name} is not installed: run `bash scripts/setup.sh` (or `make test`), "
            "which installs the Debian packages"
        )
    return path


def wait_until(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; raise with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the service may not be up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what or check}: last error {last_error!r}"
    )


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def http_post(
    url: str, data: bytes, content_type: str = "application/json", timeout: float = 10.0
) -> bytes:
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


class _Service:
    """A child process with a log file; terminated (then killed) on exit."""

    name = "service"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def _spawn(self, argv: list[str], **kwargs: Any) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}"
            )

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self._log.close()
        self.process = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def scrape_job(
    name: str, targets: Iterable[str], interval: str = "1s", **extra: Any
) -> dict[str, Any]:
    job = {
        "job_name": name,
        "scrape_interval": interval,
        "static_configs": [{"targets": list(targets)}],
    }
    job.update(extra)
    return job


class Prometheus(_Service):
    """A real Prometheus server (Debian `prometheus`)."""

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        scrape_configs: list[dict[str, Any]] | None = None,
        rule_files: Iterable[str | Path] = (),
        alertmanager_url: str | None = None,
        data_dir: Path | None = None,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        retention: str = "3650d",
        extra_args: Iterable[str] = (),
    ) -> None:
        super().__init__(workdir)
        self.scrape_configs = scrape_configs or []
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.alertmanager_url = alertmanager_url
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "prometheus-data"
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.retention = retention
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": self.scrape_configs,
        }
        if self.rule_files:
            config["rule_files"] = self.rule_files
        if self.alertmanager_url:
            target = urllib.parse.urlparse(self.alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        return config

    def start(self) -> None:
        binary = require_binary("prometheus")
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config()))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--web.enable-admin-api",
                *self.extra_args,
            ]
        )
        wait_until(self._ready, timeout=60, what="prometheus /-/ready")

    def _ready(self) -> bool:
        self._check_alive()
        return http_get(f"{self.url}/-/ready", timeout=2) is not None

    def reload(self) -> None:
        http_post(f"{self.url}/-/reload", b"")

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=60)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"prometheus {path} {params}: {error.read().decode()}") from error
        payload = json.loads(body)
        if payload.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {payload}")
        return payload["data"]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=promql, time=time)["result"]

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        return self.api("query_range", query=promql, start=start, end=end, step=step)["result"]

    def value(self, promql: str, time: float | None = None) -> float | None:
        """The value of a query that returns one series, or None when it returns none."""
        result = self.query(promql, time)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{promql} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_until(self, check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
        return wait_until(check, timeout=timeout, what=what)

    def wait_for_targets_up(self, timeout: float = 60.0) -> None:
        def all_up() -> bool:
            targets = self.api("targets")["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_until(all_up, timeout=timeout, what="all scrape targets up")

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]


def backfill_openmetrics(
    text_or_path: str | Path, data_dir: Path, workdir: Path | None = None
) -> None:
    """Write OpenMetrics text (ending in `# EOF`) into TSDB blocks under data_dir."""
    promtool = require_binary("promtool")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(text_or_path, Path) or (
        isinstance(text_or_path, str) and os.path.exists(text_or_path)
    ):
        source = Path(text_or_path)
    else:
        source = Path(workdir or tempfile.mkdtemp()) / "backfill.om"
        text = str(text_or_path)
        source.write_text(
            text if text.rstrip().endswith("# EOF") else text.rstrip("\n") + "\n# EOF\n"
        )
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data_dir)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {result.stdout}\n{result.stderr}")


class Alertmanager(_Service):
    """A real Alertmanager (Debian `prometheus-alertmanager`)."""

    name = "alertmanager"

    def __init__(
        self, workdir: Path, config_path: Path | None = None, config: dict | None = None
    ) -> None:
        super().__init__(workdir)
        self.config_path = Path(config_path) if config_path else self.workdir / "alertmanager.yml"
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require_binary("prometheus-alertmanager")
        storage = self.workdir / "alertmanager-data"
        storage.mkdir(exist_ok=True)
        self._spawn(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.path={storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # A single instance: no gossip port to collide with other tests.
                "--cluster.listen-address=",
            ]
        )
        wait_until(
            lambda: self._check_alive() or http_get(f"{self.url}/-/ready", timeout=2),
            timeout=60,
            what="alertmanager /-/ready",
        )

    def alerts(self) -> list[dict[str, Any]]:
        return json.loads(http_get(f"{self.url}/api/v2/alerts"))


class VictoriaMetrics(_Service):
    """A real single-node VictoriaMetrics (Debian `victoria-metrics`); Prometheus query API at .url."""

    name = "victoria-metrics"

    def __init__(
        self, workdir: Path, retention: str = "100y", extra_args: Iterable[str] = ()
    ) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.retention = retention
        self.extra_args = list(extra_args)

    def start(self) -> None:
        binary = require_binary("victoria-metrics")
        self._spawn(
            [
                binary,
                f"-storageDataPath={self.workdir / 'vm-data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-retentionPeriod={self.retention}",
                "-search.disableCache",
                # Answer with samples up to now (the default hides the last 30 s).
                "-search.latencyOffset=0s",
                *self.extra_args,
            ]
        )
        wait_until(
            lambda: self._check_alive() or http_get(f"{self.url}/health", timeout=2),
            timeout=60,
            what="victoria-metrics /health",
        )

    def import_prometheus_text(self, text: str) -> None:
        """Import exposition text with explicit millisecond timestamps, then flush."""
        http_post(f"{self.url}/api/v1/import/prometheus", text.encode(), content_type="text/plain")
        self.flush()

    def flush(self) -> None:
        http_get(f"{self.url}/internal/force_flush")


def _postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise MissingService(
            "PostgreSQL is not installed: run `bash scripts/setup.sh` (or `make test`), "
            "which installs the Debian package"
        )
    return candidates[-1]


class PostgreSQL(_Service):
    """A real PostgreSQL server (Debian `postgresql`) in a throwaway data directory.

    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user in a
    directory that user owns. `.url` is an SQLAlchemy URL (psycopg2).
    """

    name = "postgresql"

    def __init__(self, workdir: Path, database: str = "gpuledger") -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.database = database
        # A directory of its own that the postgres user can reach (pytest's tmp is 0700).
        self.pgdir = Path(tempfile.mkdtemp(prefix="gpuledger-pg-"))
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam("postgres")

        def demote() -> None:
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

        return {"preexec_fn": demote}

    def start(self) -> None:
        initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chmod(self.pgdir, 0o700)
            os.chown(self.pgdir, entry.pw_uid, entry.pw_gid)
        data = self.pgdir / "data"
        subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **self._as_postgres(),
        )
        self._spawn(
            [
                postgres,
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.pgdir),
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ],
            **self._as_postgres(),
        )
        psql = _postgres_bin("psql")

        def accepts() -> bool:
            self._check_alive()
            return (
                subprocess.run(
                    [
                        psql,
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-U",
                        "postgres",
                        "-c",
                        "select 1",
                    ],
                    capture_output=True,
                ).returncode
                == 0
            )

        wait_until(accepts, timeout=60, what="postgresql accepting connections")
        subprocess.run(
            [
                psql,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-c",
                f"CREATE DATABASE {self.database}",
            ],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.pgdir, ignore_errors=True)
