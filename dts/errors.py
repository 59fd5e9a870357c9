"""The dts error hierarchy: one root, each subclass naming the gRPC status code it travels as."""

from __future__ import annotations

from typing import ClassVar


class DtsError(Exception):
    """Root of every error dts raises on purpose; `code` is a grpc.StatusCode name."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(DtsError):
    """Raised when a request or option value is malformed or out of range."""

    code = "INVALID_ARGUMENT"


class NotFound(DtsError):
    """Raised when a job, attempt or worker does not exist."""

    code = "NOT_FOUND"


class FailedPrecondition(DtsError):
    """Raised when the job is not in a state that allows the operation (e.g. retry of a success)."""

    code = "FAILED_PRECONDITION"


class UnknownSession(FailedPrecondition):
    """Raised when a worker's session is not known to the server (it must register again)."""


class AlreadyExists(DtsError):
    """Raised when something that must be unique is taken."""

    code = "ALREADY_EXISTS"


class SessionSuperseded(AlreadyExists):
    """Raised when another process registered under this worker's name after it did."""


class Unavailable(DtsError):
    """Raised when the server, Redis or the store cannot be reached right now."""

    code = "UNAVAILABLE"


class DeadlineExceeded(DtsError):
    """Raised when a call did not finish in time."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(DtsError):
    """Raised when a bounded resource is full (e.g. the server's set of waiting calls); the
    caller may retry later."""

    code = "RESOURCE_EXHAUSTED"


class QueueUnavailable(Unavailable):
    """Raised when the queue (Redis) cannot be reached or fails an operation."""


class ShuttingDown(Unavailable):
    """Raised when the server is draining and accepts no new work."""


class Unauthenticated(DtsError):
    """Raised when a caller presents no valid credentials."""

    code = "UNAUTHENTICATED"


class PermissionDenied(DtsError):
    """Raised when a caller's credentials do not allow the operation."""

    code = "PERMISSION_DENIED"


class Internal(DtsError):
    """Raised for a bug or a corrupted store: never for a user's mistake."""

    code = "INTERNAL"


# The class each status code becomes on the receiving side (subclasses travel as their parent).
BY_CODE: dict[str, type[DtsError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        AlreadyExists,
        Unavailable,
        DeadlineExceeded,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def from_code(code: str, message: str) -> DtsError:
    """The error for a status code name received from the other side."""
    return BY_CODE.get(code, DtsError)(message)


def first_line(e: BaseException) -> str:
    """The first line of a foreign error's message (its type's name when it has none), for a
    one-line error or log line of ours."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
