"""The blocking client."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Union

import httpx

from . import _common as c
from .errors import HubError, JobFailedError, WaitTimeoutError
from .models import (
    Agent, Artifact, Job, LiveReset, LiveSegment, Result, StreamItem, result_for, stream_items,
)


class Client:
    """The hub's HTTP API (docs/api.md), blocking.

    >>> hub = Client("http://127.0.0.1:7480", token="mh_...")     # or Client(data_dir="/var/lib/morag-hub")
    >>> job = hub.submit_file("talk.mp3", "audio")
    >>> job = hub.wait(job.id, progress=lambda p: print(p.percent, p.stage))
    >>> hub.result(job.id).transcript
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        data_dir: Optional[c.PathLike] = None,
        timeout: float = 30.0,
        transport: Optional[httpx.BaseTransport] = None,
    ):
        self.url, self.token = c.resolve(url, token, data_dir)
        self._http = httpx.Client(
            base_url=self.url, headers=c.headers(self.token), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise HubError(f"cannot reach the hub at {self.url}: {e}") from e
        c.raise_for(r)
        return r

    # ---- jobs -------------------------------------------------------------------------------

    def submit_file(
        self,
        file: Union[c.PathLike, IO[bytes]],
        content_type: str,
        *,
        filename: Optional[str] = None,
        queue: Optional[str] = None,
        priority: Optional[str] = None,
        gpu: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        external_ref: Optional[str] = None,
        deadline: Optional[Union[str, datetime]] = None,
        max_attempts: Optional[int] = None,
        reuse: bool = True,
    ) -> Job:
        """Upload a media file (a path or an open binary file) as a new job. With `reuse` (the
        default) the hub may give it the result of an earlier job on the same content, or let
        it follow such a job that is running (`Job.reused_from`, `Job.joined_to`);
        `reuse=False` runs it in any case."""
        body = c.submission(
            content_type, queue, priority, gpu, options, external_ref, deadline, max_attempts, reuse=reuse
        )
        if isinstance(file, (str, Path)) or hasattr(file, "__fspath__"):
            path = Path(file)  # type: ignore[arg-type]
            with path.open("rb") as f:
                return self._upload(f, filename or path.name, body)
        return self._upload(file, filename or Path(getattr(file, "name", "upload")).name, body)  # type: ignore[arg-type]

    def _upload(self, f: IO[bytes], name: str, body: Dict[str, Any]) -> Job:
        r = self._request("POST", "/api/v1/jobs", data=c.form_fields(body), files={"file": (name, f)})
        return Job.from_json(r.json())

    def submit_path(
        self,
        source_file_path: str,
        content_type: str,
        *,
        queue: Optional[str] = None,
        priority: Optional[str] = None,
        gpu: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        external_ref: Optional[str] = None,
        deadline: Optional[Union[str, datetime]] = None,
        max_attempts: Optional[int] = None,
        reuse: bool = True,
    ) -> Job:
        """A job for a file already on the hub's host (an absolute path there); `reuse` as for
        `submit_file`."""
        body = c.submission(
            content_type, queue, priority, gpu, options, external_ref, deadline, max_attempts, reuse=reuse
        )
        r = self._request("POST", "/api/v1/jobs", json=c.json_body(body, source_file_path))
        return Job.from_json(r.json())

    def job(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/api/v1/jobs/{job_id}").json())

    def jobs(self, *, state: Optional[str] = None, queue: Optional[str] = None, limit: Optional[int] = None) -> List[Job]:
        """Jobs, newest first (at most `limit`, 100 unless given)."""
        params = {k: v for k, v in {"state": state, "queue": queue, "limit": limit}.items() if v is not None}
        return [Job.from_json(j) for j in self._request("GET", "/api/v1/jobs", params=params).json()["jobs"]]

    def cancel(self, job_id: str) -> Job:
        """Ask for a cancel: a queued job ends now; a running one once its agent stops."""
        return Job.from_json(self._request("POST", f"/api/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: str, *, after: int = 0, read_timeout: Optional[float] = None) -> Iterator[StreamItem]:
        """The job's events from `after` on: its history, then live until the job ends.
        `JobEvent`s, except the live transcript: a `LiveSegment` for each segment of a `segment`
        batch, in order, and a `LiveReset` when the text so far is void. Every item has the
        `seq` to resume from (`after=`); the segments of one batch share it, so resume from a
        batch's seq only once all of it was taken. `read_timeout`: seconds a silent stream is
        waited for (the hub sends a keep-alive every 15 s) before `HubError`."""
        read = c.STREAM_READ_TIMEOUT if read_timeout is None else read_timeout
        timeout = httpx.Timeout(self._http.timeout.connect, read=read, write=None, pool=None)
        try:
            with self._http.stream(
                "GET", f"/api/v1/jobs/{job_id}/events", params={"after": after}, timeout=timeout
            ) as r:
                if not r.is_success:
                    r.read()
                    c.raise_for(r)
                parser = c.SseParser()
                for line in r.iter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        yield from stream_items(ev)
        except httpx.HTTPError as e:
            raise HubError(f"event stream of {job_id} broke: {e}") from e

    def wait(
        self,
        job_id: str,
        *,
        progress: Optional[c.ProgressCallback] = None,
        timeout: Optional[float] = None,
        raise_on_failure: bool = True,
        on_segment: Optional[c.SegmentCallback] = None,
        on_reset: Optional[c.ResetCallback] = None,
    ) -> Job:
        """Follow the job until it ends; call `progress` with each progress report,
        `on_segment` with each piece of live transcript as it comes (from the stream's start:
        a job already running gets its text so far first) and `on_reset` when the text so
        far is void (drop it). Raises `JobFailedError` when it ends without a result (unless
        `raise_on_failure=False`) and `WaitTimeoutError` after `timeout` seconds. A broken
        stream is followed up again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = 0
        while True:
            job = self.job(job_id)
            if job.done:
                return _finish(job, raise_on_failure)
            left = None if deadline is None else max(0.05, deadline - time.monotonic())
            try:
                for ev in self.events(job_id, after=last, read_timeout=_read_timeout(left)):
                    last = max(last, ev.seq)
                    if isinstance(ev, LiveSegment):
                        if on_segment is not None:
                            on_segment(ev)
                    elif isinstance(ev, LiveReset):
                        if on_reset is not None:
                            on_reset(ev)
                    else:
                        p = c.progress_of(ev)
                        if p is not None and progress is not None:
                            progress(p)
                        if ev.final:
                            break
                    if deadline is not None and time.monotonic() > deadline:
                        break
            except HubError as e:
                if e.status is not None:
                    raise
                if deadline is None or time.monotonic() < deadline:
                    time.sleep(1.0)  # the hub restarted or the link broke: look again
            if deadline is not None and time.monotonic() > deadline:
                job = self.job(job_id)
                if job.done:
                    return _finish(job, raise_on_failure)
                raise WaitTimeoutError(f"job {job_id} still {job.state} after {timeout} s")

    def result_document(self, job_id: str) -> Dict[str, Any]:
        """The agent's result document as JSON (409 `ConflictError` until the job completed)."""
        return self._request("GET", f"/api/v1/jobs/{job_id}/result").json()

    def result(self, job_id: str, content_type: Optional[str] = None) -> Result:
        """The typed result: `AudioResult` (MoRAG's shape) for audio, `VideoResult` for video,
        a dict for images."""
        kind = content_type or self.job(job_id).content_type
        return result_for(kind, self.result_document(job_id))

    def artifact(self, job_id: str, artifact: Union[Artifact, str]) -> bytes:
        """One artifact's bytes, by entry or BLAKE3 hash."""
        digest = artifact.blake3 if isinstance(artifact, Artifact) else artifact
        return self._request("GET", f"/api/v1/jobs/{job_id}/artifacts/{digest}").content

    def download(self, job_id: str, artifact: Artifact, dest: c.PathLike) -> Path:
        """Stream an artifact into `dest` (a directory: under the artifact's name)."""
        out = Path(dest)
        if out.is_dir():
            out = out / artifact.name
        tmp = out.with_name(out.name + ".part")
        try:
            with self._http.stream("GET", f"/api/v1/jobs/{job_id}/artifacts/{artifact.blake3}") as r:
                if not r.is_success:
                    r.read()
                    c.raise_for(r)
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
        except httpx.HTTPError as e:
            tmp.unlink(missing_ok=True)
            raise HubError(f"download of {artifact.name} broke: {e}") from e
        tmp.replace(out)
        return out

    # ---- agents and the hub -----------------------------------------------------------------

    def agents(self) -> List[Agent]:
        return [Agent.from_json(a) for a in self._request("GET", "/api/v1/agents").json()["agents"]]

    def drain(self, agent_id: str) -> bool:
        """Give the agent no new work (stored; it finishes what it runs). Returns `drained`."""
        return bool(self._request("POST", f"/api/v1/agents/{agent_id}/drain").json()["drained"])

    def undrain(self, agent_id: str) -> bool:
        return bool(self._request("POST", f"/api/v1/agents/{agent_id}/undrain").json()["drained"])

    def overview(self) -> Dict[str, Any]:
        """Jobs by state, queue depth, the last hour's throughput and failures, agents."""
        return self._request("GET", "/api/v1/overview").json()

    def health(self) -> Dict[str, Any]:
        """`/healthz` (no token needed): status, version, connected agents."""
        try:
            r = self._http.get("/healthz")
        except httpx.HTTPError as e:
            raise HubError(f"cannot reach the hub at {self.url}: {e}") from e
        return r.json()


def _read_timeout(left: Optional[float]) -> Optional[float]:
    """A stream's read timeout inside `wait`: no longer than the time left."""
    return None if left is None else min(c.STREAM_READ_TIMEOUT, left)


def _finish(job: Job, raise_on_failure: bool) -> Job:
    if raise_on_failure and not job.succeeded:
        raise JobFailedError(job)
    return job
