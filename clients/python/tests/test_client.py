"""The client against a real hub and agent (conftest.py): every call, both clients, the
errors with the hub's messages, reuse by content and the live transcript.

The same recording is submitted by several tests: a test that needs its job to run (progress,
attempts, an agent, a drained agent that never takes it) submits with `reuse=False`, or the
job would complete at once from an earlier test's result."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from morag_hub import (
    AsyncClient,
    AudioResult,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    HubError,
    JobEvent,
    JobFailedError,
    LiveReset,
    LiveSegment,
    NotFoundError,
    Progress,
    Segment,
    WaitTimeoutError,
    transcript_text,
)

NO_SUCH_JOB = "job_" + "0" * 32


@pytest.fixture
def client(hub):
    with Client(hub.url, hub.token) as c:
        yield c


def test_upload_wait_with_progress_and_the_morag_result(client, hub):
    job = client.submit_file(hub.jfk, "audio", external_ref="ingest-7", options={"language": "en"}, reuse=False)
    assert job.state == "queued" and job.input.name == "jfk.wav" and job.external_ref == "ingest-7"
    assert job.reuse is False
    assert job.options == {"language": "en"}
    seen = []
    done = client.wait(job.id, progress=seen.append, timeout=120)
    assert done.state == "completed" and done.succeeded and done.done
    assert seen and all(isinstance(p, Progress) for p in seen), seen
    assert all(0 <= p.percent <= 100 for p in seen)
    assert [p.percent for p in seen] == sorted(p.percent for p in seen), "progress only rises"
    assert done.attempts[-1].agent_id == hub.agent_id and done.attempts[-1].outcome == "completed"

    result = client.result(job.id)
    assert isinstance(result, AudioResult) and result.success
    assert "country" in result.transcript.lower()
    assert result.segments and all(isinstance(s, Segment) for s in result.segments)
    first = result.segments[0]
    assert 0 <= first.start < first.end <= 12 and isinstance(first.confidence, float)
    # The agent has the diarization and topic models (scripts/setup-test-model.sh): one speaker.
    assert first.speaker == "SPEAKER_00" and first.topic_id == 0 and first.topic_label
    assert result.metadata["has_speaker_info"] is True and result.metadata["has_topic_info"] is True
    assert result.metadata["file_name"] == "jfk.wav" and result.metadata["segment_count"] == len(result.segments)
    assert result.markdown_transcript.startswith("# Audio Transcription: jfk.wav")

    # The artifacts: MoRAG's four files and the result document, each downloadable.
    names = {a.name for a in done.artifacts}
    assert {"jfk_transcript.txt", "jfk_segments.json", "jfk.md", "jfk_metadata.json"} <= names, names
    txt = next(a for a in done.artifacts if a.name == "jfk_transcript.txt")
    data = client.artifact(job.id, txt)
    assert len(data) == txt.size and "country" in data.decode().lower()
    segs = next(a for a in done.artifacts if a.name == "jfk_segments.json")
    saved = client.download(job.id, segs, hub.data_dir.parent)
    assert saved.name == "jfk_segments.json" and saved.stat().st_size == segs.size
    assert len(json.loads(saved.read_text())) == len(result.segments)


def test_a_path_on_the_hub_and_an_open_file(client, hub):
    by_path = client.submit_path(str(hub.jfk), "audio", priority="high", max_attempts=2, reuse=False)
    assert by_path.source_path == str(hub.jfk) and by_path.priority == "high" and by_path.max_attempts == 2
    assert by_path.reuse is False, "the JSON body's reuse"
    with open(hub.jfk, "rb") as f:
        by_file = client.submit_file(io.BytesIO(f.read()), "audio/wav", filename="again.wav", reuse=False)
    assert by_file.content_type == "audio" and by_file.input.name == "again.wav"
    for j in (by_path, by_file):
        assert client.wait(j.id, timeout=120).state == "completed"
    listed = {j.id: j for j in client.jobs(state="completed")}
    assert listed[by_file.id].agent_id == hub.agent_id, "listings name the agent"


def test_events_come_in_order_and_end_with_the_job(client, hub):
    job = client.submit_file(hub.jfk, "audio", reuse=False)
    kinds, seqs, batch_seqs = [], [], set()
    for ev in client.events(job.id):
        assert ev.job_id == job.id
        kinds.append(ev.kind)
        seqs.append(ev.seq)
        if isinstance(ev, LiveSegment):
            batch_seqs.add(ev.seq)
    assert kinds[0] == "queued" and kinds[-1] == "completed", kinds
    assert "assigned" in kinds and "running" in kinds
    # The segments of one batch share its seq; every other event has its own.
    plain = [s for s, k in zip(seqs, kinds) if k != "segment"]
    assert seqs == sorted(seqs) and len(set(plain)) == len(plain) and not batch_seqs & set(plain)
    assert kinds[1] != "segment"
    # Replaying from a point gives only what came after it.
    rest = [ev.seq for ev in client.events(job.id, after=seqs[1])]
    assert rest == seqs[2:]


def test_cancel_a_running_job(client, hub):
    job = client.submit_file(hub.long_recording, "audio", reuse=False)
    for ev in client.events(job.id):
        if ev.kind == "progress":
            break
    cancelled = client.cancel(job.id)
    assert cancelled.cancel_requested_at is not None
    with pytest.raises(JobFailedError) as e:
        client.wait(job.id, timeout=60)
    assert e.value.job.state == "cancelled"
    assert client.wait(job.id, raise_on_failure=False).state == "cancelled"
    with pytest.raises(ConflictError, match="already ended"):
        client.cancel(job.id)
    with pytest.raises(ConflictError, match="is cancelled"):
        client.result(job.id)


def test_wait_gives_up_after_its_timeout(client, hub):
    client.drain(hub.agent_id)
    try:
        job = client.submit_file(hub.jfk, "audio", reuse=False)  # else jfk's earlier result ends it
        t0 = time.monotonic()
        with pytest.raises(WaitTimeoutError, match="still queued"):
            client.wait(job.id, timeout=1.0)
        assert time.monotonic() - t0 < 5, "wait kept its timeout"
        queued = client.jobs(state="queued")
        assert job.id in {j.id for j in queued} and all(j.state == "queued" for j in queued)
        assert client.cancel(job.id).state == "cancelled"
    finally:
        client.undrain(hub.agent_id)


def test_errors_carry_the_hubs_message(client, hub):
    with Client(hub.url, "mh_wrong") as bad:
        with pytest.raises(AuthenticationError, match="wrong bearer token") as e:
            bad.jobs()
        assert e.value.status == 401
    with pytest.raises(NotFoundError, match=f"no job {NO_SUCH_JOB}"):
        client.job(NO_SUCH_JOB)
    with pytest.raises(BadRequestError, match="bad job id"):
        client.job("nope")
    with pytest.raises(BadRequestError, match="unknown job state"):
        client.jobs(state="done")
    with pytest.raises(BadRequestError, match="must be an absolute path"):
        client.submit_path("jfk.wav", "audio")
    with pytest.raises(BadRequestError):
        client.submit_file(hub.jfk, "spreadsheet")
    with pytest.raises(NotFoundError, match="no agent"):
        client.drain("no-such-agent")
    with Client("http://127.0.0.1:9", "x") as nowhere:
        with pytest.raises(HubError, match="cannot reach the hub") as e:
            nowhere.jobs()
        assert e.value.status is None


def test_a_missing_url_or_token_is_named(monkeypatch):
    monkeypatch.delenv("MORAG_HUB_URL", raising=False)
    monkeypatch.delenv("MORAG_HUB_TOKEN", raising=False)
    with pytest.raises(HubError, match="no hub URL"):
        Client(token="x")
    with pytest.raises(HubError, match="no API token"):
        Client("http://127.0.0.1:1")
    monkeypatch.setenv("MORAG_HUB_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("MORAG_HUB_TOKEN", "mh_x")
    with Client() as c:
        assert (c.url, c.token) == ("http://127.0.0.1:1", "mh_x")


def test_agents_drain_overview_and_health(client, hub):
    agents = {a.id: a for a in client.agents()}
    me = agents[hub.agent_id]
    assert me.connected and me.health is not None and me.health.healthy
    # One hub: it holds the agent's session itself.
    assert me.hub and me.hub.startswith("hub_")
    assert 0 <= me.health.cpu_usage <= 100 and me.connection is not None
    assert me.health.gpus == [] or me.health.gpus[0].name
    assert client.drain(hub.agent_id) is True
    assert next(a for a in client.agents() if a.id == hub.agent_id).drained
    assert client.undrain(hub.agent_id) is False
    o = client.overview()
    assert o["agents"]["connected"] >= 1 and o["agents"]["known"] >= 1
    assert sum(o["jobs"].values()) == len(client.jobs(limit=10000))
    assert len(o["last_hour"]["bars"]) == 12
    assert client.health()["status"] == "ok"


def test_data_dir_gives_url_and_token(hub):
    with Client(data_dir=hub.data_dir) as c:
        assert c.url == hub.url and c.token == hub.token
        assert any(a.id == hub.agent_id for a in c.agents())
    with pytest.raises(HubError, match="cannot read"):
        Client(data_dir=hub.data_dir / "nope")


def test_async_client_does_the_same(hub):
    async def main():
        async with AsyncClient(hub.url, hub.token) as c:
            job = await c.submit_file(hub.jfk, "audio", queue="gpu_priority", reuse=False)
            seen = []

            async def on_progress(p):
                seen.append(p.percent)

            done = await c.wait(job.id, progress=on_progress, timeout=120)
            assert done.state == "completed" and seen
            result = await c.result(job.id)
            assert isinstance(result, AudioResult) and "country" in result.transcript.lower()
            kinds = [ev.kind async for ev in c.events(job.id)]
            assert kinds[0] == "queued" and kinds[-1] == "completed"
            art = done.artifacts[0]
            assert len(await c.artifact(job.id, art)) == art.size
            assert any(a.id == hub.agent_id and a.connected for a in await c.agents())
            assert (await c.overview())["jobs"]["completed"] >= 1
            with pytest.raises(NotFoundError):
                await c.job(NO_SUCH_JOB)
            long = await c.submit_file(hub.long_recording, "audio", reuse=False)
            await c.cancel(long.id)
            with pytest.raises(JobFailedError, match="cancelled"):
                await c.wait(long.id, timeout=60)

    asyncio.run(main())


def test_a_deadline_given_as_a_datetime_in_any_zone(client, hub):
    client.drain(hub.agent_id)  # nothing runs it: the deadline ends it
    try:
        soon = datetime.now(timezone.utc) + timedelta(seconds=2)
        elsewhere = soon.astimezone(timezone(timedelta(hours=2)))
        job = client.submit_file(hub.jfk, "audio", deadline=elsewhere, reuse=False)
        assert job.deadline is not None and abs((job.deadline - soon).total_seconds()) < 0.01
        with pytest.raises(JobFailedError, match="timed_out"):
            client.wait(job.id, timeout=30)
        with pytest.raises(BadRequestError, match="already past"):
            client.submit_file(hub.jfk, "audio", deadline=soon - timedelta(minutes=1), reuse=False)
    finally:
        client.undrain(hub.agent_id)


def test_the_same_content_again_takes_the_first_jobs_result(client, hub, jfk_twice):
    first = client.wait(client.submit_file(jfk_twice, "audio").id, timeout=180)
    assert first.reuse and first.reused_from is None and first.joined_to is None
    assert first.attempt_count == 1 and first.attempts[-1].outcome == "completed", "nothing to reuse yet: it ran"
    assert first.result_key and re.fullmatch(r"[0-9a-f]{64}", first.result_key), first.result_key

    again = client.submit_file(jfk_twice, "audio")
    second = client.wait(again.id, timeout=60)
    assert second.state == "completed" and second.reused_from == first.id
    assert second.result_key == first.result_key
    assert second.attempt_count == 0 and second.attempts == [], "it took the result without running"
    assert sorted(a.blake3 for a in second.artifacts) == sorted(a.blake3 for a in first.artifacts)
    assert client.result(second.id).transcript == client.result(first.id).transcript

    async def by_async():
        async with AsyncClient(hub.url, hub.token) as c:
            return await c.wait((await c.submit_file(jfk_twice, "audio")).id, timeout=60)

    # Its result is the first job's, whichever of the two it names.
    assert asyncio.run(by_async()).reused_from in (first.id, second.id)

    third = client.submit_file(jfk_twice, "audio", reuse=False)
    assert third.reuse is False
    third = client.wait(third.id, timeout=180)
    assert third.reused_from is None and third.joined_to is None
    assert third.attempts and third.attempts[-1].agent_id == hub.agent_id
    assert third.attempts[-1].outcome == "completed"


def _words(text):
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_the_transcript_comes_live_while_the_job_runs(client, hub, spoken):
    job = client.submit_file(spoken.path, "audio", reuse=False)
    live, resets, state_at_first = [], [], []

    def on_segment(s):
        if not state_at_first:
            state_at_first.append(client.job(job.id).state)
        live.append(s)

    def on_reset(r):
        resets.append(r)
        live.clear()

    done = client.wait(job.id, on_segment=on_segment, on_reset=on_reset, timeout=300)
    assert done.state == "completed"
    assert state_at_first and state_at_first[0] != "completed", state_at_first
    assert live, f"no live segments (resets: {resets})"
    assert all(isinstance(s, LiveSegment) and s.job_id == job.id for s in live)
    assert {s.attempt_id for s in live} == {done.attempts[-1].id}, "the text shown is the last attempt's"
    indexes = [s.index for s in live]
    assert all(a < b for a, b in zip(indexes, indexes[1:])), indexes
    assert [s.seq for s in live] == sorted(s.seq for s in live)
    assert all(0 <= s.start <= s.end <= spoken.seconds + 1 for s in live), [(s.start, s.end) for s in live]
    assert [s.start for s in live] == sorted(s.start for s in live)

    shown, final = _words(transcript_text(live)), _words(client.result(job.id).transcript)
    common = shown & final
    assert len(common) >= 0.8 * len(shown) and len(common) >= 0.5 * len(final), (transcript_text(live), final)

    # The stream replays the same segments, and resumes after a batch's seq.
    key = lambda s: (s.attempt_id, s.index, s.text)  # noqa: E731
    replayed = [ev for ev in client.events(job.id)]
    assert all(isinstance(ev, (JobEvent, LiveSegment, LiveReset)) for ev in replayed)
    segs = [key(ev) for ev in replayed if isinstance(ev, LiveSegment)]
    assert segs[-len(live):] == [key(s) for s in live]
    # live holds what came after the last reset, so after its first batch there are only its own.
    after = live[0].seq
    rest = list(client.events(job.id, after=after))
    assert rest and all(ev.seq > after for ev in rest) and rest[-1].kind == "completed"
    assert [key(ev) for ev in rest if isinstance(ev, LiveSegment)] == [key(s) for s in live if s.seq > after]
