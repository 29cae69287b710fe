"""``zmesh.onion.directory.HttpClient`` over the page's ``fetch``: how a tab publishes and fetches
onion descriptors at a signal server (its own origin, or another that allows it by CORS)."""

from __future__ import annotations

from pyodide.ffi import to_js  # type: ignore[import-not-found]
from pyodide.http import pyfetch  # type: ignore[import-not-found]

from ..errors import ProtocolError, TransportError
from ..onion.directory import MAX_ANSWER


class PageHttp:
    """One ``fetch`` per request. An answer declaring more than ``MAX_ANSWER`` bytes is refused
    before its body is read; one that turns out longer is refused after (``limit`` bytes if given:
    the directory authorities' documents are larger)."""

    def __init__(self, limit: int = MAX_ANSWER) -> None:
        self.limit = limit

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        options = {} if body is None else {"body": to_js(body), "headers": {"Content-Type": "application/octet-stream"}}
        try:
            response = await pyfetch(url, method=method, **options)
        except OSError as exc:  # what pyfetch raises for a network failure or a CORS refusal
            raise TransportError(f"cannot reach {url.split('/v1/')[0]}: {exc}") from exc
        declared = response.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            raise ProtocolError(f"the answer is {declared} bytes; the limit is {self.limit}")
        data = await response.bytes()
        if len(data) > self.limit:
            raise ProtocolError(f"the answer exceeds the limit of {self.limit} bytes")
        return response.status, data
