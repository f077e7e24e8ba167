"""The pieces of the client that need no hub: the event-stream parser, the live transcript,
progress reports, submission fields, the job's fields, error mapping; and `events`, `wait` and
submissions against a stand-in for the hub (httpx's MockTransport)."""

import asyncio
import io
import json
from datetime import datetime, timezone

import httpx

from morag_hub import (
    AsyncClient,
    BadRequestError,
    Client,
    ConflictError,
    HubError,
    Job,
    JobEvent,
    LiveReset,
    LiveSegment,
    Progress,
    transcript_text,
)
from morag_hub import _common as c
from morag_hub.errors import error_for
from morag_hub.models import stream_items


def feed(lines):
    p = c.SseParser()
    return [ev for ev in (p.feed(line) for line in lines) if ev is not None]


def test_events_are_parsed_across_comments_and_split_data():
    evs = feed([
        ": keep-alive",
        "",
        "event: progress",
        "id: 7",
        'data: {"seq": 7, "job_id": "job_1", "at": "2026-12-03T07:00:00.000Z",',
        'data:  "kind": "progress", "data": {"percent": 42.5, "stage": "transcribing", "eta_ms": 1764745200000}}',
        "",
        "event: lagged",
        'data: {"missed": 3}',
        "",
        "data: not json",
        "",
    ])
    assert len(evs) == 1, "comments, events of no job and bad JSON are skipped"
    ev = evs[0]
    assert (ev.seq, ev.job_id, ev.kind) == (7, "job_1", "progress")
    assert ev.at == datetime(2026, 12, 3, 7, 0, tzinfo=timezone.utc)
    p = c.progress_of(ev)
    assert p.percent == 42.5 and p.stage == "transcribing"
    assert p.eta == "2025-12-03T07:00:00.000000Z"


def test_submission_fields():
    body = c.submission("audio", "q", "high", None, {"language": "en", "beam": 5}, "ref", None, 2)
    assert body == {"content_type": "audio", "queue": "q", "priority": "high",
                    "options": {"language": "en", "beam": "5"}, "external_ref": "ref", "max_attempts": "2"}
    form = c.form_fields(body)
    assert isinstance(form, dict) and form["options"] == '{"language": "en", "beam": "5"}'
    assert c.json_body(body, "/data/a.wav")["max_attempts"] == 2
    naive = datetime(2026, 12, 3, 7, 0, 0)
    assert c.utc_text(naive) == "2026-12-03T07:00:00.000000Z"


def test_errors_map_to_their_classes():
    assert isinstance(error_for(400, "bad"), BadRequestError)
    e = error_for(409, "job x already ended (cancelled)")
    assert isinstance(e, ConflictError) and e.status == 409 and "already ended" in str(e)
    assert type(error_for(418, "teapot")) is HubError


JOB = "job_" + "1" * 32
AT = "2026-12-03T07:00:00.000Z"


def sse(seq, kind, data, job_id=JOB):
    """One event as the hub writes it."""
    doc = {"seq": seq, "job_id": job_id, "at": AT, "kind": kind, "data": data}
    return [f"event: {kind}", f"id: {seq}", "data: " + json.dumps(doc), ""]


def items(lines):
    return [i for ev in feed(lines) for i in stream_items(ev)]


def test_a_segment_batch_becomes_live_segments_in_order_with_its_seq():
    got = items(
        sse(4, "running", {"attempt_id": "att_1"})
        + sse(5, "segment", {"attempt_id": "att_1", "segments": [
            {"index": 0, "start": 0.0, "end": 2.5, "text": " Hello there."},
            {"index": 1, "start": 2.5, "end": 4.0, "text": " General Kenobi. "},
        ]})
        + sse(6, "segment", {"attempt_id": "att_1", "segments": [
            {"index": 2, "start": 4.0, "end": 6.25, "text": "You are a bold one."},
        ]})
    )
    assert isinstance(got[0], JobEvent) and got[0].kind == "running"
    segs = got[1:]
    assert all(isinstance(s, LiveSegment) for s in segs)
    assert [(s.index, s.seq) for s in segs] == [(0, 5), (1, 5), (2, 6)]
    first = segs[0]
    assert (first.job_id, first.attempt_id, first.start, first.end, first.text) == (JOB, "att_1", 0.0, 2.5, " Hello there.")
    assert first.kind == "segment" and not first.final, "reads like an event where code asks for kind/final"
    assert transcript_text(segs) == "Hello there. General Kenobi. You are a bold one."
    assert transcript_text([]) == ""


def test_live_reset_is_parsed_and_unknown_kinds_stay_job_events():
    got = items(
        sse(9, "live_reset", {"attempt_id": "att_1", "reason": "attempt requeued: agent lost"})
        + sse(10, "shiny_new_kind", {"x": 1})
        + sse(11, "segment", {"attempt_id": "att_2", "segments": []})
        + sse(12, "completed", {})
    )
    reset = got[0]
    assert reset == LiveReset(JOB, "att_1", "attempt requeued: agent lost", 9)
    assert reset.kind == "live_reset" and not reset.final
    assert [type(i) for i in got[1:]] == [JobEvent, JobEvent], "an empty batch yields nothing"
    assert got[1].kind == "shiny_new_kind" and got[1].data == {"x": 1}
    assert got[2].final


def job_json(**extra):
    v = {
        "id": JOB, "state": "completed", "content_type": "audio", "queue": "default", "priority": "normal",
        "gpu": "any", "input": {"name": "a.wav", "size": 10, "blake3": "ab" * 32}, "options": {},
        "max_attempts": 3, "attempt_count": 1, "created_at": AT, "updated_at": AT,
        "attempts": [], "artifacts": [],
    }
    v.update(extra)
    return v


def test_job_reads_the_reuse_fields_and_does_without_them():
    old = Job.from_json(job_json())
    assert (old.reuse, old.result_key, old.reused_from, old.joined_to) == (True, None, None, None)
    other = "job_" + "2" * 32
    new = Job.from_json(job_json(reuse=False, result_key="cd" * 32, reused_from=other, joined_to=other))
    assert (new.reuse, new.result_key, new.reused_from, new.joined_to) == (False, "cd" * 32, other, other)
    assert Job.from_json(job_json(reuse=True, result_key=None, reused_from=None, joined_to=None)).reuse is True


def test_reuse_is_sent_only_when_off():
    on = c.submission("audio", None, None, None, None, None, None, None)
    assert "reuse" not in on and "reuse" not in c.form_fields(on)
    off = c.submission("audio", None, None, None, None, None, None, None, reuse=False)
    assert c.form_fields(off)["reuse"] == "false"
    assert c.json_body(off, "/data/a.wav")["reuse"] is False


class FakeHub:
    """The job routes: the job is running until its stream was read to the end; the stream
    replays from `after`. Records submissions."""

    def __init__(self, lines_by_seq):
        self.events = lines_by_seq  # [(seq, lines)]
        self.streamed = False
        self.afters = []
        self.submissions = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/jobs" and request.method == "POST":
            self.submissions.append((request.headers["content-type"], request.read()))
            return httpx.Response(200, json=job_json(state="queued"))
        if path == f"/api/v1/jobs/{JOB}":
            return httpx.Response(200, json=job_json(state="completed" if self.streamed else "running"))
        if path == f"/api/v1/jobs/{JOB}/events":
            after = int(request.url.params.get("after", "0"))
            self.afters.append(after)
            self.streamed = True
            body = "\n".join(line for seq, lines in self.events if seq > after for line in lines) + "\n"
            return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": "no route"})


def stream():
    return [
        (1, sse(1, "running", {"attempt_id": "att_1"})),
        (2, sse(2, "segment", {"attempt_id": "att_1", "segments": [
            {"index": 0, "start": 0.0, "end": 1.0, "text": " old"}]})),
        (3, sse(3, "live_reset", {"attempt_id": "att_1", "reason": "requeued"})),
        (4, sse(4, "progress", {"percent": 50.0, "stage": "transcribing"})),
        (5, sse(5, "segment", {"attempt_id": "att_2", "segments": [
            {"index": 0, "start": 0.0, "end": 1.0, "text": " new"},
            {"index": 1, "start": 1.0, "end": 2.0, "text": "text "}]})),
        (6, sse(6, "completed", {})),
    ]


def test_wait_hands_segments_resets_and_progress_to_their_callbacks():
    fake = FakeHub(stream())
    live, resets, progress = [], [], []

    def on_reset(r):
        resets.append(r)
        live.clear()

    with Client("http://hub.test", "mh_x", transport=httpx.MockTransport(fake)) as hub:
        job = hub.wait(JOB, progress=progress.append, on_segment=live.append, on_reset=on_reset, timeout=10)
        assert job.state == "completed"
        assert transcript_text(live) == "new text" and [s.seq for s in live] == [5, 5]
        assert [r.seq for r in resets] == [3] and [p.percent for p in progress] == [50.0]
        assert all(isinstance(p, Progress) for p in progress)
        # events(): every item has the seq to resume from.
        seen = list(hub.events(JOB))
        assert [type(i).__name__ for i in seen] == [
            "JobEvent", "LiveSegment", "LiveReset", "JobEvent", "LiveSegment", "LiveSegment", "JobEvent"]
        assert [i.seq for i in hub.events(JOB, after=seen[2].seq)] == [4, 5, 5, 6]
        assert fake.afters[-1] == 3
        hub.submit_file(io.BytesIO(b"RIFF"), "audio", filename="a.wav", reuse=False)
        hub.submit_path("/data/a.wav", "audio", reuse=False)
        hub.submit_path("/data/a.wav", "audio")
    (form_type, form), (_, body), (_, default) = fake.submissions
    assert form_type.startswith("multipart/form-data") and b'name="reuse"\r\n\r\nfalse\r\n' in form
    assert json.loads(body)["reuse"] is False and "reuse" not in json.loads(default)


def test_async_wait_and_events_do_the_same():
    async def main():
        fake = FakeHub(stream())
        live, resets = [], []

        async def on_segment(s):
            live.append(s)

        def on_reset(r):
            resets.append(r)
            live.clear()

        async with AsyncClient("http://hub.test", "mh_x", transport=httpx.MockTransport(fake)) as hub:
            job = await hub.wait(JOB, on_segment=on_segment, on_reset=on_reset, timeout=10)
            assert job.state == "completed" and transcript_text(live) == "new text"
            assert [r.attempt_id for r in resets] == ["att_1"]
            kinds = [i.kind async for i in hub.events(JOB, after=4)]
            assert kinds == ["segment", "segment", "completed"]
            await hub.submit_path("/data/a.wav", "audio", reuse=False)
        assert json.loads(fake.submissions[0][1])["reuse"] is False

    asyncio.run(main())
