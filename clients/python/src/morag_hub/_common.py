"""What the sync and async clients share: where the hub is, the form of a submission, error
answers and the event-stream parser. No I/O here."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import httpx

from .errors import HubError, error_for
from .models import JobEvent, LiveReset, LiveSegment, Progress

PathLike = Union[str, "os.PathLike[str]"]
# `wait`'s callbacks; for AsyncClient a coroutine function too.
ProgressCallback = Callable[[Progress], Any]
SegmentCallback = Callable[[LiveSegment], Any]
ResetCallback = Callable[[LiveReset], Any]

# Event streams send a comment every 15 s; a read that waits longer than this is a dead link.
STREAM_READ_TIMEOUT = 40.0


def resolve(
    url: Optional[str], token: Optional[str], data_dir: Optional[PathLike]
) -> Tuple[str, str]:
    """The hub's base URL and token: the arguments, else the hub's data directory (`hub-url`,
    `api-token`), else `MORAG_HUB_URL` / `MORAG_HUB_TOKEN`."""
    if data_dir is not None:
        d = Path(data_dir)
        try:
            url = url or (d / "hub-url").read_text().strip()
            token = token or (d / "api-token").read_text().strip()
        except OSError as e:
            raise HubError(f"cannot read the hub's address or token from {d}: {e}") from e
    url = url or os.environ.get("MORAG_HUB_URL")
    token = token or os.environ.get("MORAG_HUB_TOKEN")
    if not url:
        raise HubError("no hub URL: pass url=, data_dir= or set MORAG_HUB_URL")
    if not token:
        raise HubError("no API token: pass token=, data_dir= or set MORAG_HUB_TOKEN")
    return url.rstrip("/"), token


def headers(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": "morag-hub-python/0.1"}


def raise_for(r: httpx.Response) -> None:
    """Raise the error an answer carries (its `{"error": ...}` message), if any."""
    if r.is_success:
        return
    try:
        message = r.json().get("error") or r.text
    except (ValueError, AttributeError):
        message = r.text or r.reason_phrase
    raise error_for(r.status_code, message or r.reason_phrase)


def submission(
    content_type: str,
    queue: Optional[str],
    priority: Optional[str],
    gpu: Optional[str],
    options: Optional[Mapping[str, Any]],
    external_ref: Optional[str],
    deadline: Optional[Union[str, datetime]],
    max_attempts: Optional[int],
    reuse: bool = True,
) -> Dict[str, Any]:
    """A submission's fields, as the JSON body names them (the form uses the same names).
    `reuse` is sent only when False (the hub's default is True, and older hubs know no such
    field)."""
    body: Dict[str, Any] = {"content_type": content_type}
    if queue is not None:
        body["queue"] = queue
    if priority is not None:
        body["priority"] = priority
    if gpu is not None:
        body["gpu"] = gpu
    if options:
        body["options"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}
    if external_ref is not None:
        body["external_ref"] = external_ref
    if deadline is not None:
        body["deadline"] = utc_text(deadline) if isinstance(deadline, datetime) else deadline
    if max_attempts is not None:
        body["max_attempts"] = str(max_attempts)
    if not reuse:
        body["reuse"] = False
    return body


def form_fields(body: Dict[str, Any]) -> Dict[str, str]:
    """The multipart text parts for a submission (a mapping: httpx sends a list as raw body);
    a switch is `true` / `false`."""
    return {k: _form_value(v) for k, v in body.items()}


def _form_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def utc_text(t: datetime) -> str:
    """RFC 3339 in UTC (`...Z`), the only form the hub reads; a naive time is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_body(body: Dict[str, Any], source_file_path: str) -> Dict[str, Any]:
    b = dict(body)
    if "max_attempts" in b:
        b["max_attempts"] = int(b["max_attempts"])
    b["source_file_path"] = source_file_path
    return b


def progress_of(event: JobEvent) -> Optional[Progress]:
    if event.kind != "progress":
        return None
    d = event.data
    eta = d.get("eta_ms")  # when the agent expects to finish, ms since the Unix epoch
    eta_text = None
    if eta is not None:
        eta_text = utc_text(datetime.fromtimestamp(eta / 1000, timezone.utc))
    return Progress(float(d.get("percent") or 0.0), d.get("stage"), d.get("message"), eta_text)


class SseParser:
    """Server-sent events, line by line: `feed` returns an event when a blank line ends one."""

    def __init__(self) -> None:
        self.kind = "message"
        self.data: List[str] = []

    def feed(self, line: str) -> Optional[JobEvent]:
        line = line.rstrip("\r\n")
        if line == "":
            kind, data = self.kind, "\n".join(self.data)
            self.kind, self.data = "message", []
            if not data:
                return None
            try:
                v = json.loads(data)
            except ValueError:
                return None
            if not isinstance(v, dict) or "job_id" not in v:
                return None
            v.setdefault("kind", kind)
            return JobEvent.from_json(v)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        return None
