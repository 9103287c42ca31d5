"""`gpuledger dashboards push`: the requests grafana-client sends, against a stand-in for
Grafana's HTTP API (no Grafana server can run here), and the errors a user can hit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboards import cli, generate
from dashboards.push import PushError, push

TOKEN = "glsa_test-token"


class _GrafanaHandler(BaseHTTPRequestHandler):
    """The three endpoints push uses, answering as Grafana's HTTP API documents them."""

    server: _FakeGrafana

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._reply(401, {"message": "invalid API key"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(("GET", self.path, None))
        if not self._authorised():
            return
        uid = self.path.removeprefix("/api/folders/")
        if uid in self.server.folders:
            self._reply(200, {"uid": uid, "title": self.server.folders[uid]})
        else:
            self._reply(404, {"message": "folder not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body))
        if not self._authorised():
            return
        if self.path == "/api/folders":
            self.server.folders[body["uid"]] = body["title"]
            self._reply(200, {"uid": body["uid"], "title": body["title"]})
        elif self.path == "/api/dashboards/db":
            if body["folderUid"] not in self.server.folders:
                self._reply(400, {"message": "folder not found"})
                return
            uid = body["dashboard"]["uid"]
            self.server.dashboards[uid] = body
            self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x"})
        else:
            self._reply(404, {"message": "not found"})

    def log_message(self, *args: object) -> None:
        pass


class _FakeGrafana(ThreadingHTTPServer):
    def __init__(self, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _GrafanaHandler)
        self.token = token
        self.requests: list[tuple[str, str, dict | None]] = []
        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def grafana() -> Iterator[_FakeGrafana]:
    server = _FakeGrafana(TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_push_creates_the_folder_and_every_dashboard(grafana: _FakeGrafana) -> None:
    models = generate.build_all()
    urls = push(grafana.url, TOKEN, models)
    assert urls == [f"/d/{uid}/x" for uid in models]
    assert grafana.folders == {"gpuledger": "gpuledger"}
    assert set(grafana.dashboards) == set(models)
    for uid, body in grafana.dashboards.items():
        assert body["overwrite"] is True and body["folderUid"] == "gpuledger"
        assert body["dashboard"]["id"] is None
        assert body["dashboard"]["panels"] == models[uid]["panels"]


def test_push_again_keeps_the_existing_folder(grafana: _FakeGrafana) -> None:
    models = generate.build_all()
    push(grafana.url, TOKEN, models)
    push(grafana.url, TOKEN, models)
    creates = [r for r in grafana.requests if r[:2] == ("POST", "/api/folders")]
    assert len(creates) == 1


def test_a_bad_token_says_what_token_to_use(grafana: _FakeGrafana) -> None:
    with pytest.raises(PushError, match="refused the token .*service account token"):
        push(grafana.url, "wrong", generate.build_all())


def test_an_unreachable_grafana_is_named(grafana: _FakeGrafana) -> None:
    url = grafana.url
    grafana.shutdown()
    grafana.server_close()
    with pytest.raises(PushError, match=f"cannot reach Grafana at {url}"):
        push(url, TOKEN, generate.build_all(), timeout=2)


def test_cli_push_one_dashboard(grafana: _FakeGrafana, capsys: pytest.CaptureFixture) -> None:
    parser = cli_parser()
    args = parser.parse_args(
        ["push", "--url", grafana.url, "--token", TOKEN, "--dashboard", "gpuledger-fleet"]
    )
    assert args.func(args) == 0
    assert set(grafana.dashboards) == {"gpuledger-fleet"}
    assert "/d/gpuledger-fleet/x" in capsys.readouterr().out


def test_cli_push_without_a_token_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    args = cli_parser().parse_args(["push", "--url", "http://127.0.0.1:1"])
    assert args.func(args) == 2
    assert "set GRAFANA_TOKEN" in capsys.readouterr().err


def cli_parser():
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser)
    return parser
