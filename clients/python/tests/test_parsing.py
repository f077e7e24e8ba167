"""The pieces of the client that need no hub: the event-stream parser, progress reports,
submission fields, error mapping."""

from datetime import datetime, timezone

from morag_hub import BadRequestError, ConflictError, HubError
from morag_hub import _common as c
from morag_hub.errors import error_for


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
