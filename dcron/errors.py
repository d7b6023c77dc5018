"""The exception tree of dcron.

    DcronError
     +-- InvalidInput     a client's mistake; names the field (HTTP 400)
     +-- NotFound         no such job or execution (HTTP 404)
     +-- Conflict         the request contradicts stored state (HTTP 409)
     +-- Unavailable      no leader, or a commit did not finish in time (HTTP 503)
     +-- ConfigError      a bad setting; names the flag

Library errors (peewee, pysyncobj, croniter) are translated into these at the
module boundary that meets them, with ``raise ... from exc``.
"""


class DcronError(Exception):
    """Base of every error dcron raises on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DcronError):
    """The client sent something dcron cannot accept; the message names the field."""

    status = 400

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class TooLarge(DcronError):
    """A request body exceeds its bound."""

    status = 413


class NotFound(DcronError):
    """The named job or execution does not exist."""

    status = 404


class Conflict(DcronError):
    """The request is well formed but contradicts the stored state."""

    status = 409


class Unavailable(DcronError):
    """The cluster cannot commit right now: no leader, or the commit timed out."""

    status = 503


class ConfigError(DcronError):
    """A setting has a bad value; the message names the flag."""

    status = 400
