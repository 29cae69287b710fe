"""``zmesh.onion.directory.HttpClient`` over the page's ``fetch``: how a tab publishes and fetches
onion descriptors at a signal server (its own origin, or another that allows it by CORS)."""

from __future__ import annotations

from pyodide.ffi import to_js  # type: ignore[import-not-found]
from pyodide.http import pyfetch  # type: ignore[import-not-found]

from ..errors import ProtocolError, TransportError
from ..onion.directory import MAX_ANSWER


class PageHttp:
    """One ``fetch`` per request. An answer declaring more than ``MAX_ANSWER`` bytes is refused
    before its body is read; one that turns out longer is refused after."""

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        options = {} if body is None else {"body": to_js(body), "headers": {"Content-Type": "application/octet-stream"}}
        try:
            response = await pyfetch(url, method=method, **options)
        except OSError as exc:  # what pyfetch raises for a network failure or a CORS refusal
            raise TransportError(f"cannot reach {url.split('/v1/')[0]}: {exc}") from exc
        declared = response.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > MAX_ANSWER:
            raise ProtocolError(f"the answer is {declared} bytes; the limit is {MAX_ANSWER}")
        data = await response.bytes()
        if len(data) > MAX_ANSWER:
            raise ProtocolError(f"the answer exceeds the limit of {MAX_ANSWER} bytes")
        return response.status, data
