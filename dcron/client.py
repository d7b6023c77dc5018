"""The HTTP client the command-line verbs use to talk to a node.

Every call either returns the node's answer or raises ``ClientError`` with a
message for people: the API's own error text (``job x not found``), or why
the node could not be reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from dcron.errors import DcronError

DEFAULT_ADDRESS = "http://127.0.0.1:8080"
ADDRESS_ENV = "DCRON_ADDRESS"
TIMEOUT_S = 30.0
# A backup or restore moves the whole store; give it longer than a call.
TRANSFER_TIMEOUT_S = 600.0
CHUNK_BYTES = 1024 * 1024


class ClientError(DcronError):
    """The node answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """``$DCRON_ADDRESS`` when set, else the local node's default address."""
    environ = os.environ if environ is None else environ
    return environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def path_of(*parts: str) -> str:
    """A URL path from parts; each part is quoted, so any job name is safe."""
    return "/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)


class Client:
    """Calls one node's API."""

    def __init__(self, address: str = DEFAULT_ADDRESS) -> None:
        address = address.strip().rstrip("/")
        if "://" not in address:
            address = "http://" + address
        self.address = address

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send ``body`` as JSON and return the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        with self._answer(method, path, data, "application/json", TIMEOUT_S) as raw:
            return self._decode(raw.read())

    def download(self, path: str) -> Iterator[bytes]:
        """GET ``path`` and yield the raw answer in chunks."""
        with self._answer("GET", path, None, "", TRANSFER_TIMEOUT_S) as raw:
            while chunk := raw.read(CHUNK_BYTES):
                yield chunk

    def upload(self, path: str, data: bytes) -> Any:
        """POST raw bytes and return the decoded JSON answer."""
        kind = "application/octet-stream"
        with self._answer("POST", path, data, kind, TRANSFER_TIMEOUT_S) as raw:
            return self._decode(raw.read())

    @contextlib.contextmanager
    def _answer(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str,
        timeout: float,
    ) -> Iterator[Any]:
        """The open answer to one request; failures become ClientError."""
        request = urllib.request.Request(self.address + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                yield answer
        except urllib.error.HTTPError as error:
            raise ClientError(_error_text(error.read()), error.code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ClientError(f"cannot reach {self.address}: {reason}") from None

    def _decode(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise ClientError(f"{self.address} did not answer with JSON") from None


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip() or "no answer"
