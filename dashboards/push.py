"""Upload dashboards to a Grafana server through its HTTP API (grafana-client)."""

from __future__ import annotations

from typing import Any

import niquests
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException


class PushError(RuntimeError):
    """Grafana refused or could not be reached; the message says what to check."""


def _explain(error: GrafanaException, url: str) -> str:
    status = getattr(error, "status_code", None)
    if status in (401, 403):
        return (
            f"Grafana at {url} refused the token (HTTP {status}): use a service account token "
            "with the Editor role (or dashboards:write and folders:write)"
        )
    if not status:
        return f"cannot reach Grafana at {url}: {error}"
    return f"Grafana at {url} answered HTTP {status}: {getattr(error, 'message', error)}"


def push(
    url: str,
    token: str,
    models: dict[str, dict[str, Any]],
    folder_uid: str = "gpuledger",
    folder_title: str = "gpuledger",
    timeout: float = 10.0,
) -> list[str]:
    """Create or overwrite each dashboard in the folder; return the URLs Grafana gives them."""
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    try:
        try:
            api.folder.get_folder(folder_uid)
        except GrafanaClientError as error:
            if getattr(error, "status_code", None) != 404:
                raise
            api.folder.create_folder(folder_title, uid=folder_uid)
        urls = []
        for uid, model in models.items():
            answer = api.dashboard.update_dashboard(
                {
                    "dashboard": {**model, "id": None, "uid": uid},
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "gpuledger dashboards push",
                }
            )
            urls.append(str(answer.get("url", uid)))
        return urls
    except GrafanaException as error:
        raise PushError(_explain(error, url)) from None
    except niquests.exceptions.RequestException as error:
        raise PushError(f"cannot reach Grafana at {url}: {error}") from None
