"""Errors raised by the clients. Every error from the hub carries its status and message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .models import Job


class HubError(Exception):
    """The hub answered with an error (`{"error": "..."}`), or could not be reached."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message if status is None else f"{message} (HTTP {status})")
        self.message = message
        self.status = status


class BadRequestError(HubError):
    """400: a field, parameter, id or body was wrong; the message names it."""


class AuthenticationError(HubError):
    """401: the bearer token is missing or wrong."""


class NotFoundError(HubError):
    """404: no such job, agent, artifact or route."""


class ConflictError(HubError):
    """409: the job is in the wrong state (no result yet, or it already ended)."""


class PayloadTooLargeError(HubError):
    """413: the upload is over the hub's `max_upload_bytes`."""


class UnavailableError(HubError):
    """503: the hub is shutting down or its database failed."""


class JobFailedError(HubError):
    """`wait()` saw the job end without a result: failed, cancelled or timed out."""

    def __init__(self, job: "Job"):
        super().__init__(f"job {job.id} ended {job.state}: {job.error or 'no reason given'}")
        self.job = job


class WaitTimeoutError(HubError):
    """`wait()` gave up before the job ended; the job goes on at the hub."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    503: UnavailableError,
}


def error_for(status: int, message: str) -> HubError:
    """The exception for an error answer."""
    return _BY_STATUS.get(status, HubError)(message, status)
