"""The Dockerfiles (no engine runs here, so they are read, not built) and the command
lines the manifests give their containers, parsed by the real `gpuledger` parser."""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuledger.cli import SUBCOMMANDS, build_parser
from tests.deploy import schemas
from tests.deploy.dockerfile import copy_sources, ignored, stages
from tests.deploy.manifests import DEPLOY, REPO, VARIANTS, container, find, of_kind, variant

DOCKER = REPO / "docker"
IMAGES = ("exporter", "accounting", "loadgen")
DOCKERIGNORE = (REPO / ".dockerignore").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


def _serve_parser() -> argparse.ArgumentParser | None:
    """`accounting serve`'s own parser while accounting/cli.py does not register it yet."""
    from accounting import cli

    if "serve" in cli.SUBCOMMANDS:
        return None
    try:
        from accounting.service import add_serve
    except ImportError:
        pytest.skip("`gpuledger accounting serve` is not written yet")
    parser = argparse.ArgumentParser(prog="gpuledger accounting serve")
    add_serve(parser)
    parser.set_defaults(command="accounting", accounting_command="serve")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """argv as `gpuledger` parses it; AssertionError with argparse's complaint."""
    only = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(only=only or "__none__")
    if argv[:2] == ["accounting", "serve"] and (serve := _serve_parser()) is not None:
        parser, argv = serve, argv[2:]
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"`gpuledger {' '.join(argv)}`: {stderr.getvalue()}") from None


def commands(argv: list[str]) -> list[str]:
    """The chain of subcommands argv names (`accounting serve`), each checked against
    the real parsers; flags (and what they require) are left to the manifests' tests."""
    parser: argparse.ArgumentParser = build_parser(only=argv[0] if argv else "__none__")
    chain: list[str] = []
    for word in argv:
        if word.startswith("-"):
            break
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert actions, f"`gpuledger {' '.join(chain)}` takes no subcommand {word!r}"
        choices = actions[0].choices
        if chain == ["accounting"] and word == "serve" and word not in choices:
            parser = _serve_parser() or parser
        else:
            assert word in choices, f"`gpuledger {' '.join(chain + [word])}` is no command"
            parser = choices[word]
        chain.append(word)
    return chain


# ---------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize(
    ("image", "default"),
    [("exporter", ["exporter"]), ("accounting", ["accounting", "serve"]), ("loadgen", ["loadgen"])],
)
def test_entrypoint_is_a_real_gpuledger_command(image: str, default: list[str]) -> None:
    final = stages(dockerfile(image))[-1]
    entrypoint = final.exec_form("ENTRYPOINT")
    assert entrypoint is not None and entrypoint[:2] == ["gpuledger", image]
    assert commands(entrypoint[1:] + (final.exec_form("CMD") or [])) == default


def test_the_entrypoint_check_rejects_an_unknown_command() -> None:
    with pytest.raises(AssertionError, match="is no command"):
        commands(["exporterr"])
    with pytest.raises(AssertionError, match="is no command"):
        commands(["accounting", "serv"])
    with pytest.raises(AssertionError, match="invalid choice"):
        parse(["exporterr"])
    with pytest.raises(AssertionError, match="unrecognized arguments: --proc-rot"):
        parse(["exporter", "--proc-rot=/host/proc"])


@pytest.mark.parametrize("image", IMAGES)
def test_images_run_python_3_11_slim_as_a_non_root_user(image: str) -> None:
    built = stages(dockerfile(image))
    assert all(s.base == "python:3.11-slim" for s in built)
    user = built[-1].last("USER")
    assert user is not None and re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:")


def _pip_installs(image: str) -> list[str]:
    return [run for run in stages(dockerfile(image))[-1].all("RUN") if "pip install" in run]


def test_the_exporter_image_has_no_torch() -> None:
    installs = _pip_installs("exporter")
    assert installs, "the exporter image installs nothing"
    assert not any("torch" in run or "[" in run for run in installs), installs
    assert not any(d.startswith("torch") for d in PYPROJECT["project"]["dependencies"])


def test_the_loadgen_image_has_torch_and_accounting_has_postgres() -> None:
    assert any("[torch]" in run for run in _pip_installs("loadgen"))
    assert any("[postgres]" in run for run in _pip_installs("accounting"))
    assert not any("torch" in run for run in _pip_installs("accounting"))


@pytest.mark.parametrize("image", IMAGES)
def test_the_build_context_holds_what_each_image_copies(image: str) -> None:
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    sources = [s for stage in stages(dockerfile(image)) for s in copy_sources(stage)]
    assert packages | {"pyproject.toml", "README.md"} <= {s.rstrip("/") for s in sources}
    for source in sources:
        assert (REPO / source).exists(), f"{image}: COPY {source}: no such path"
        assert not ignored(source, DOCKERIGNORE), f"{image}: .dockerignore drops {source}"


def test_dockerignore_keeps_tests_and_caches_out() -> None:
    for path in (
        "tests/deploy/test_images.py",
        ".git/HEAD",
        "deploy/base",
        "exporter/__pycache__/x.pyc",
    ):
        assert ignored(path, DOCKERIGNORE), path
    assert not ignored("exporter/attribution/proto/api_pb2.py", DOCKERIGNORE)


def test_the_build_context_builds_a_complete_wheel(tmp_path: Path) -> None:
    """What `pip wheel .` makes in the build stage from the context .dockerignore allows."""
    context = tmp_path / "context"
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if path.is_file() and not ignored(str(relative), DOCKERIGNORE):
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / relative)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = (tmp_path / "wheels").glob("gpuledger-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "gpuledger/cli.py",
        "exporter/attribution/proto/api_pb2.py",
        "accounting/pricebooks/default.yaml",
        "alerts/rules/gpuledger-alerts.yaml",
    ):
        assert needed in names, f"the image's wheel lacks {needed}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gpuledger = gpuledger.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ---------------------------------------------------------------- command lines
def _env(c: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment; values from ConfigMaps looked up in the render."""
    env = {}
    for entry in c.get("env", []):
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif ref:
            env[entry["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def argv_of(c: dict[str, Any], objects: list[dict[str, Any]]) -> list[str]:
    """What `gpuledger` receives: the image's ENTRYPOINT (or the container's command)
    and its args, with $(VAR) expanded as the kubelet does."""
    if "command" in c:
        assert c["command"][0] == "gpuledger", f"{c['name']} runs {c['command'][0]}, not gpuledger"
        line = c["command"] + c.get("args", [])
    else:
        image = c["image"].rpartition(":")[0].rpartition("/")[2]
        final = stages(dockerfile(image))[-1]
        line = final.exec_form("ENTRYPOINT") + c.get("args", final.exec_form("CMD") or [])
    env = _env(c, objects)
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in line[1:]]


@pytest.mark.parametrize("name", VARIANTS)
def test_exporter_flags_are_real_and_point_at_the_mounts(name: str) -> None:
    objects = variant(name)
    daemonset = find(objects, "DaemonSet", "gpuledger-exporter")
    c = container(daemonset, "exporter")
    args = parse(argv_of(c, objects))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    host = {
        v["name"]: v["hostPath"]["path"]
        for v in daemonset["spec"]["template"]["spec"]["volumes"]
        if "hostPath" in v
    }
    assert host[mounts[args.proc_root]] == "/proc"
    assert host[mounts[str(Path(args.kubelet_socket).parent)]] == "/var/lib/kubelet/pod-resources"
    assert host[mounts[str(Path(args.probe_socket).parent)]] == "/var/run/gpuledger"
    assert not args.simulated and args.device == "auto"
    port = int(args.listen.rpartition(":")[2])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]


@pytest.mark.parametrize("name", VARIANTS)
def test_accounting_flags_are_real(name: str) -> None:
    objects = variant(name)
    c = container(find(objects, "Deployment", "gpuledger-accounting"), "accounting")
    argv = argv_of(c, objects)
    assert argv[:2] == ["accounting", "serve"]
    assert re.match(r"^--prometheus=https?://", argv[2]), "the Prometheus URL was not expanded"
    args = parse(argv)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[str(Path(args.price_book).parent)] == "price-book"
    assert mounts[str(Path(args.api_token_file).parent)] == "api-token"
    port = int(args.listen.rpartition(":")[2])
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in c["ports"]
    assert args.public_metrics is name.startswith("plain")


def test_the_deployed_price_book_is_the_packaged_example() -> None:
    from accounting.pricebook import DEFAULT_PRICE_BOOK, load_price_book

    deployed = DEPLOY / "base" / "accounting" / "price-book.yaml"
    assert deployed.read_text() == DEFAULT_PRICE_BOOK.read_text(), (
        "copy accounting/pricebooks/default.yaml to deploy/base/accounting/price-book.yaml"
    )
    assert load_price_book(deployed).models


LOADGEN_MANIFESTS = sorted((DEPLOY / "loadgen").glob("*.yaml"))


def _pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "PyTorchJob":
        return [s["template"] for s in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]]
    return []


@pytest.mark.parametrize("path", LOADGEN_MANIFESTS, ids=lambda p: p.name)
def test_loadgen_manifests_are_valid_and_their_flags_real(path: Path) -> None:
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    templates = [t for o in objects for t in _pod_templates(o)]
    assert templates, f"{path.name} holds no Job or PyTorchJob"
    for obj in objects:
        schemas.validate(obj)
    for template in templates:
        for c in template["spec"]["containers"]:
            if c["image"].rpartition(":")[0].endswith("/loadgen"):
                assert parse(argv_of(c, objects)).command == "loadgen"


def test_every_image_the_manifests_name_has_a_dockerfile() -> None:
    images = {
        c["image"].rpartition(":")[0]
        for name in VARIANTS
        for kind in ("DaemonSet", "Deployment")
        for w in of_kind(variant(name), kind)
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"ghcr.io/gpuledger/exporter", "ghcr.io/gpuledger/accounting"}
    for image in images:
        assert dockerfile(image.rpartition("/")[2]).is_file()
