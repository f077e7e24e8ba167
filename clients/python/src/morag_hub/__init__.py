"""Python client for the MoRAG hub: submit media jobs, follow them, fetch MoRAG-shaped results.

    from morag_hub import Client
    hub = Client(data_dir="/var/lib/morag-hub")        # or Client(url, token=...), or MORAG_HUB_URL/_TOKEN
    job = hub.wait(hub.submit_file("talk.mp3", "audio").id, progress=lambda p: print(p.percent))
    print(hub.result(job.id).transcript)

`wait(..., on_segment=...)` gets the transcript live as the agent decodes it (`LiveSegment`,
`LiveReset`, `transcript_text`); a job on content already processed takes that result
(`submit_file(..., reuse=False)` runs it anew). `AsyncClient` offers the same calls for
asyncio. Errors from the hub are `HubError` subclasses carrying the hub's message and status.
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    HubError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    WaitTimeoutError,
)
from .models import (
    FINAL_STATES,
    Agent,
    AgentHealth,
    Artifact,
    Attempt,
    AudioResult,
    Connection,
    GpuStatus,
    InputFile,
    Job,
    JobEvent,
    LiveReset,
    LiveSegment,
    Progress,
    Segment,
    StreamItem,
    VideoResult,
    transcript_text,
)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient",
    "HubError", "BadRequestError", "AuthenticationError", "NotFoundError", "ConflictError",
    "PayloadTooLargeError", "UnavailableError", "JobFailedError", "WaitTimeoutError",
    "Job", "JobEvent", "Progress", "InputFile", "Attempt", "Artifact", "AudioResult", "VideoResult",
    "Segment", "LiveSegment", "LiveReset", "StreamItem", "transcript_text", "Agent", "AgentHealth", "GpuStatus", "Connection", "FINAL_STATES",
]
