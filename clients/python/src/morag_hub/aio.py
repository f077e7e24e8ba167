"""The asyncio client: the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import datetime
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Union

import httpx

from . import _common as c
from .client import _finish, _read_timeout
from .errors import HubError, WaitTimeoutError
from .models import (
    Agent, Artifact, Job, LiveReset, LiveSegment, Result, StreamItem, result_for, stream_items,
)


class AsyncClient:
    """The hub's HTTP API (docs/api.md) for asyncio.

    >>> async with AsyncClient(data_dir="/var/lib/morag-hub") as hub:
    ...     job = await hub.submit_file("talk.mp3", "audio")
    ...     job = await hub.wait(job.id, progress=print)
    ...     result = await hub.result(job.id)
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        data_dir: Optional[c.PathLike] = None,
        timeout: float = 30.0,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ):
        self.url, self.token = c.resolve(url, token, data_dir)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=c.headers(self.token), timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise HubError(f"cannot reach the hub at {self.url}: {e}") from e
        c.raise_for(r)
        return r

    async def submit_file(
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
        """Upload a media file (a path or an open binary file) as a new job; `reuse` as for
        `Client.submit_file` (False: run it even when an earlier job's result would do)."""
        body = c.submission(
            content_type, queue, priority, gpu, options, external_ref, deadline, max_attempts, reuse=reuse
        )
        if isinstance(file, (str, Path)) or hasattr(file, "__fspath__"):
            path = Path(file)  # type: ignore[arg-type]
            data = await asyncio.to_thread(path.read_bytes)
            name = filename or path.name
        else:
            data = file.read()  # type: ignore[union-attr]
            name = filename or Path(getattr(file, "name", "upload")).name
        r = await self._request("POST", "/api/v1/jobs", data=c.form_fields(body), files={"file": (name, data)})
        return Job.from_json(r.json())

    async def submit_path(
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
        """A job for a file already on the hub's host; `reuse` as for `Client.submit_file`."""
        body = c.submission(
            content_type, queue, priority, gpu, options, external_ref, deadline, max_attempts, reuse=reuse
        )
        r = await self._request("POST", "/api/v1/jobs", json=c.json_body(body, source_file_path))
        return Job.from_json(r.json())

    async def job(self, job_id: str) -> Job:
        return Job.from_json((await self._request("GET", f"/api/v1/jobs/{job_id}")).json())

    async def jobs(self, *, state: Optional[str] = None, queue: Optional[str] = None, limit: Optional[int] = None) -> List[Job]:
        params = {k: v for k, v in {"state": state, "queue": queue, "limit": limit}.items() if v is not None}
        r = await self._request("GET", "/api/v1/jobs", params=params)
        return [Job.from_json(j) for j in r.json()["jobs"]]

    async def cancel(self, job_id: str) -> Job:
        return Job.from_json((await self._request("POST", f"/api/v1/jobs/{job_id}/cancel")).json())

    async def events(self, job_id: str, *, after: int = 0, read_timeout: Optional[float] = None) -> AsyncIterator[StreamItem]:
        """The job's events from `after` on: its history, then live until the job ends; the live
        transcript as `LiveSegment`s and `LiveReset`s, as `Client.events`."""
        read = c.STREAM_READ_TIMEOUT if read_timeout is None else read_timeout
        timeout = httpx.Timeout(self._http.timeout.connect, read=read, write=None, pool=None)
        try:
            async with self._http.stream(
                "GET", f"/api/v1/jobs/{job_id}/events", params={"after": after}, timeout=timeout
            ) as r:
                if not r.is_success:
                    await r.aread()
                    c.raise_for(r)
                parser = c.SseParser()
                async for line in r.aiter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        for item in stream_items(ev):
                            yield item
        except httpx.HTTPError as e:
            raise HubError(f"event stream of {job_id} broke: {e}") from e

    async def wait(
        self,
        job_id: str,
        *,
        progress: Optional[c.ProgressCallback] = None,
        timeout: Optional[float] = None,
        raise_on_failure: bool = True,
        on_segment: Optional[c.SegmentCallback] = None,
        on_reset: Optional[c.ResetCallback] = None,
    ) -> Job:
        """As `Client.wait`; `progress`, `on_segment` and `on_reset` may be plain functions or
        coroutine functions."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last = 0
        while True:
            job = await self.job(job_id)
            if job.done:
                return _finish(job, raise_on_failure)
            left = None if deadline is None else max(0.05, deadline - loop.time())
            try:
                # Closed on leaving, so the stream's connection goes back at once.
                async with aclosing(self.events(job_id, after=last, read_timeout=_read_timeout(left))) as events:
                    async for ev in events:
                        last = max(last, ev.seq)
                        if isinstance(ev, LiveSegment):
                            if on_segment is not None:
                                await _call(on_segment, ev)
                        elif isinstance(ev, LiveReset):
                            if on_reset is not None:
                                await _call(on_reset, ev)
                        else:
                            p = c.progress_of(ev)
                            if p is not None and progress is not None:
                                await _call(progress, p)
                            if ev.final:
                                break
                        if deadline is not None and loop.time() > deadline:
                            break
            except HubError as e:
                if e.status is not None:
                    raise
                if deadline is None or loop.time() < deadline:
                    await asyncio.sleep(1.0)
            if deadline is not None and loop.time() > deadline:
                job = await self.job(job_id)
                if job.done:
                    return _finish(job, raise_on_failure)
                raise WaitTimeoutError(f"job {job_id} still {job.state} after {timeout} s")

    async def result_document(self, job_id: str) -> Dict[str, Any]:
        return (await self._request("GET", f"/api/v1/jobs/{job_id}/result")).json()

    async def result(self, job_id: str, content_type: Optional[str] = None) -> Result:
        kind = content_type or (await self.job(job_id)).content_type
        return result_for(kind, await self.result_document(job_id))

    async def artifact(self, job_id: str, artifact: Union[Artifact, str]) -> bytes:
        digest = artifact.blake3 if isinstance(artifact, Artifact) else artifact
        return (await self._request("GET", f"/api/v1/jobs/{job_id}/artifacts/{digest}")).content

    async def agents(self) -> List[Agent]:
        return [Agent.from_json(a) for a in (await self._request("GET", "/api/v1/agents")).json()["agents"]]

    async def drain(self, agent_id: str) -> bool:
        return bool((await self._request("POST", f"/api/v1/agents/{agent_id}/drain")).json()["drained"])

    async def undrain(self, agent_id: str) -> bool:
        return bool((await self._request("POST", f"/api/v1/agents/{agent_id}/undrain")).json()["drained"])

    async def overview(self) -> Dict[str, Any]:
        return (await self._request("GET", "/api/v1/overview")).json()


async def _call(callback: Callable[[Any], Any], arg: Any) -> None:
    """Call a plain or coroutine function."""
    out = callback(arg)
    if asyncio.iscoroutine(out):
        await out
