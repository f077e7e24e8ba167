"""Typed views of the hub's answers (docs/api.md). Audio results have MoRAG's own shapes:
`AudioProcessingResult` with its segments, field for field."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Iterable, List, Optional, Union

FINAL_STATES = frozenset({"completed", "failed", "cancelled", "timed_out"})


def _time(v: Optional[str]) -> Optional[datetime]:
    if v is None:
        return None
    return datetime.fromisoformat(v.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Progress:
    """`eta`: when the agent expects to finish (RFC 3339 UTC), if it said."""

    percent: float
    stage: Optional[str] = None
    message: Optional[str] = None
    eta: Optional[str] = None

    @classmethod
    def from_json(cls, v: Optional[Dict[str, Any]]) -> Optional["Progress"]:
        if v is None:
            return None
        return cls(float(v.get("percent") or 0.0), v.get("stage"), v.get("message"), v.get("eta"))


@dataclass(frozen=True)
class InputFile:
    name: str
    size: int
    blake3: str


@dataclass(frozen=True)
class Attempt:
    id: str
    number: int
    agent_id: str
    dispatched_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    outcome: str
    error: Optional[str]

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Attempt":
        return cls(
            v["id"], int(v["number"]), v["agent_id"], _time(v.get("dispatched_at")),
            _time(v.get("started_at")), _time(v.get("finished_at")), v["outcome"], v.get("error"),
        )


@dataclass(frozen=True)
class Artifact:
    name: str
    blake3: str
    size: int
    media_type: str
    url: str


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    content_type: str
    queue: str
    priority: str
    gpu: str
    input: InputFile
    source_path: Optional[str]
    options: Dict[str, str]
    external_ref: Optional[str]
    deadline: Optional[datetime]
    max_attempts: int
    attempt_count: int
    current_attempt: Optional[str]
    agent_id: Optional[str]
    cancel_requested_at: Optional[datetime]
    progress: Optional[Progress]
    error: Optional[str]
    created_at: datetime
    updated_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    attempts: List[Attempt] = field(default_factory=list)
    artifacts: List[Artifact] = field(default_factory=list)
    #: Whether the job may take the result of an earlier job on the same content (submitted
    #: with `reuse=`); True from hubs that predate reuse.
    reuse: bool = True
    #: What the result depends on (input, content type, the agent's models and settings, the
    #: options that change the output), BLAKE3 hex; None until the hub knows it, or from old hubs.
    result_key: Optional[str] = None
    #: The job whose result this one got: set when it completed from another job's result,
    #: at once or after following it (`joined_to`).
    reused_from: Optional[str] = None
    #: The job whose work this one follows (the same result key, already running).
    joined_to: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """The job has ended (completed, failed, cancelled or timed out)."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "completed"

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Job":
        inp = v["input"]
        return cls(
            id=v["id"],
            state=v["state"],
            content_type=v["content_type"],
            queue=v["queue"],
            priority=v["priority"],
            gpu=v["gpu"],
            input=InputFile(inp["name"], int(inp["size"]), inp["blake3"]),
            source_path=v.get("source_path"),
            options=dict(v.get("options") or {}),
            external_ref=v.get("external_ref"),
            deadline=_time(v.get("deadline")),
            max_attempts=int(v["max_attempts"]),
            attempt_count=int(v["attempt_count"]),
            current_attempt=v.get("current_attempt"),
            agent_id=v.get("agent_id"),
            cancel_requested_at=_time(v.get("cancel_requested_at")),
            progress=Progress.from_json(v.get("progress")),
            error=v.get("error"),
            created_at=_time(v["created_at"]),  # type: ignore[arg-type]
            updated_at=_time(v["updated_at"]),  # type: ignore[arg-type]
            started_at=_time(v.get("started_at")),
            finished_at=_time(v.get("finished_at")),
            attempts=[Attempt.from_json(a) for a in v.get("attempts") or []],
            artifacts=[
                Artifact(a["name"], a["blake3"], int(a["size"]), a["media_type"], a["url"])
                for a in v.get("artifacts") or []
            ],
            reuse=bool(v.get("reuse", True)),
            result_key=v.get("result_key"),
            reused_from=v.get("reused_from"),
            joined_to=v.get("joined_to"),
            raw=v,
        )


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event stream (`kind` is `queued`, `assigned`, `running`,
    `progress`, `requeued`, `cancel_requested`, `cancelled`, `completed`, `failed`,
    `timed_out` or `stale_report`; `segment` and `live_reset` too, which the clients' `events()`
    yield as `LiveSegment`s and `LiveReset`)."""

    seq: int
    job_id: str
    at: datetime
    kind: str
    data: Dict[str, Any]

    @property
    def final(self) -> bool:
        return self.kind in FINAL_STATES

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "JobEvent":
        return cls(int(v.get("seq") or 0), v["job_id"], _time(v["at"]), v["kind"], v.get("data") or {})  # type: ignore[arg-type]


@dataclass(frozen=True)
class LiveSegment:
    """A piece of transcript text the running attempt `attempt_id` has decoded, sent while the
    job runs (a `segment` event carries a batch of them). `index` counts from 0 within the
    attempt; `start` and `end` are seconds from the start of the recording. `seq` is the event's
    (every segment of one batch has the batch's): the point to resume the stream from. The
    finished job's result holds the whole transcript; this is a preview of it."""

    job_id: str
    attempt_id: str
    index: int
    start: float
    end: float
    text: str
    seq: int

    #: As `JobEvent.kind`, for code that reads any event's kind.
    kind = "segment"

    @property
    def final(self) -> bool:
        return False

    @classmethod
    def batch(cls, event: JobEvent) -> List["LiveSegment"]:
        """The segments of a `segment` event, in order (entries that are not objects skipped)."""
        d = event.data
        attempt = str(d.get("attempt_id") or "")
        out = []
        for i, s in enumerate(d.get("segments") or []):
            if not isinstance(s, dict):
                continue
            out.append(cls(
                event.job_id, attempt, int(s.get("index", i)), float(s.get("start") or 0.0),
                float(s.get("end") or 0.0), str(s.get("text") or ""), event.seq,
            ))
        return out


@dataclass(frozen=True)
class LiveReset:
    """The live transcript shown so far is void (its attempt was replaced or dispatched again):
    drop the `LiveSegment`s collected; the next attempt's come from index 0."""

    job_id: str
    attempt_id: str
    reason: str
    seq: int

    #: As `JobEvent.kind`, for code that reads any event's kind.
    kind = "live_reset"

    @property
    def final(self) -> bool:
        return False

    @classmethod
    def from_event(cls, event: JobEvent) -> "LiveReset":
        d = event.data
        return cls(event.job_id, str(d.get("attempt_id") or ""), str(d.get("reason") or ""), event.seq)


#: What a client's `events()` yields.
StreamItem = Union[JobEvent, LiveSegment, LiveReset]


def stream_items(event: JobEvent) -> List[StreamItem]:
    """What `events()` yields for one event of the stream: each segment of a `segment` batch as a
    `LiveSegment` (in order), a `live_reset` as a `LiveReset`, any other event as itself."""
    if event.kind == "segment":
        return list(LiveSegment.batch(event))
    if event.kind == "live_reset":
        return [LiveReset.from_event(event)]
    return [event]


def transcript_text(segments: Iterable[Any]) -> str:
    """The segments' texts (anything with `.text`: `LiveSegment`, `Segment`), each stripped,
    joined with single spaces; empty texts left out."""
    return " ".join(t for t in (s.text.strip() for s in segments) if t)


@dataclass(frozen=True)
class Segment:
    """MoRAG's transcript segment: seconds, text, speaker, whisper's average log-probability as
    `confidence`, topic."""

    start: float
    end: float
    text: str
    speaker: Optional[str]
    confidence: float
    topic_id: Optional[int]
    topic_label: Optional[str]

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Segment":
        return cls(
            float(v["start"]), float(v["end"]), v["text"], v.get("speaker"),
            float(v["confidence"]), v.get("topic_id"), v.get("topic_label"),
        )


@dataclass(frozen=True)
class AudioResult:
    """MoRAG's `AudioProcessingResult`."""

    transcript: str
    segments: List[Segment]
    metadata: Dict[str, Any]
    file_path: str
    processing_time: float
    success: bool
    error_message: Optional[str]
    markdown_transcript: str

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "AudioResult":
        return cls(
            transcript=v["transcript"],
            segments=[Segment.from_json(s) for s in v.get("segments") or []],
            metadata=dict(v.get("metadata") or {}),
            file_path=v.get("file_path", ""),
            processing_time=float(v.get("processing_time") or 0.0),
            success=bool(v.get("success")),
            error_message=v.get("error_message"),
            markdown_transcript=v.get("markdown_transcript", ""),
        )


@dataclass(frozen=True)
class VideoResult:
    """A video job's result: MoRAG's video metadata, thumbnails and keyframes (names of the
    job's artifacts), the soundtrack's transcript when it was transcribed."""

    metadata: Dict[str, Any]
    thumbnails: List[str]
    keyframes: List[str]
    transcript: Optional[str]
    segments: List[Segment]
    audio_processing_result: Optional[AudioResult]
    processing_time: float
    success: bool
    error_message: Optional[str]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "VideoResult":
        audio = v.get("audio_processing_result")
        return cls(
            metadata=dict(v.get("metadata") or {}),
            thumbnails=list(v.get("thumbnails") or []),
            keyframes=list(v.get("keyframes") or []),
            transcript=v.get("transcript"),
            segments=[Segment.from_json(s) for s in v.get("segments") or []],
            audio_processing_result=AudioResult.from_json(audio) if audio else None,
            processing_time=float(v.get("processing_time") or 0.0),
            success=bool(v.get("success")),
            error_message=v.get("error_message"),
            raw=v,
        )


Result = Union[AudioResult, VideoResult, Dict[str, Any]]


def result_for(content_type: str, doc: Dict[str, Any]) -> Result:
    """The typed result for a job's content type; images stay a plain dict."""
    if content_type == "audio":
        return AudioResult.from_json(doc)
    if content_type == "video":
        return VideoResult.from_json(doc)
    return doc


@dataclass(frozen=True)
class GpuStatus:
    index: int
    name: str
    utilization: Optional[float]
    memory_used_bytes: Optional[int]
    memory_total_bytes: Optional[int]
    temperature_c: Optional[float]


@dataclass(frozen=True)
class AgentHealth:
    healthy: bool
    cpu_usage: float
    memory_usage: float
    gpu_usage: Optional[float]
    active_tasks: int
    error_count: int
    warnings: List[str]
    gpus: List[GpuStatus]


@dataclass(frozen=True)
class Connection:
    quality: float  # 0..1 as the hub's transport scores the link
    latency_ms: Optional[float]
    loss: Optional[float]
    reconnect_attempts: int


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    capability: str
    queues: List[str]
    content_types: List[str]
    max_concurrent_tasks: int
    hostname: str
    version: str
    connected: bool
    #: The id of the hub holding the agent's session (this one or another on the same
    #: database), None when none does.
    hub: Optional[str]
    drained: bool
    draining: bool
    health: Optional[AgentHealth]
    connection: Optional[Connection]
    running_jobs: List[str]
    hardware: Dict[str, Any]
    first_seen_at: Optional[datetime]
    last_seen_at: Optional[datetime]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Agent":
        h = v.get("health")
        c = v.get("connection")
        return cls(
            id=v["id"],
            name=v.get("name") or v["id"],
            capability=v.get("capability", ""),
            queues=list(v.get("queues") or []),
            content_types=list(v.get("content_types") or []),
            max_concurrent_tasks=int(v.get("max_concurrent_tasks") or 0),
            hostname=v.get("hostname", ""),
            version=v.get("version", ""),
            connected=bool(v.get("connected")),
            hub=v.get("hub"),
            drained=bool(v.get("drained")),
            draining=bool(v.get("draining")),
            health=None if h is None else AgentHealth(
                healthy=bool(h["healthy"]),
                cpu_usage=float(h["cpu_usage"]),
                memory_usage=float(h["memory_usage"]),
                gpu_usage=h.get("gpu_usage"),
                active_tasks=int(h["active_tasks"]),
                error_count=int(h["error_count"]),
                warnings=list(h.get("warnings") or []),
                gpus=[GpuStatus(**g) for g in h.get("gpus") or []],
            ),
            connection=None if c is None else Connection(
                float(c["quality"]), c.get("latency_ms"), c.get("loss"), int(c.get("reconnect_attempts") or 0)
            ),
            running_jobs=[r["job_id"] for r in v.get("running") or []],
            hardware=dict(v.get("hardware") or {}),
            first_seen_at=_time(v.get("first_seen_at")),
            last_seen_at=_time(v.get("last_seen_at")),
            raw=v,
        )
