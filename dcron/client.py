"""The HTTP client the command-line verbs use to talk to a node."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from dcron.errors import DcronError

DEFAULT_ADDRESS = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0


class ClientError(DcronError):
    """The node answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """Calls one node's API and returns its decoded JSON."""

    def __init__(self, address: str = DEFAULT_ADDRESS) -> None:
        self.address = address.rstrip("/")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.address + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise ClientError(_error_text(error.read()), error.code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ClientError(f"cannot reach {self.address}: {reason}") from None


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip() or "no answer"
