"""Client side of the signal server's directory API (used by relays, clients and tests)."""

from __future__ import annotations

import base64

import aiohttp

from zmesh.errors import TransportError


class SignalClient:
    """Publish and list descriptors. Descriptors come back raw: the caller verifies them."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _request(self, method: str, path: str, **kwargs: object) -> dict:
        try:
            async with self._http().request(method, self.base_url + path, **kwargs) as response:
                body = await response.json(content_type=None)
                if response.status >= 400:
                    detail = body.get("detail", "") if isinstance(body, dict) else ""
                    code = body.get("error", response.status) if isinstance(body, dict) else response.status
                    raise TransportError(f"signal server refused {method} {path}: {code} {detail}".strip())
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TransportError(f"cannot reach the signal server at {self.base_url}: {exc}") from exc

    async def publish(self, raw: bytes) -> dict:
        return await self._request("POST", "/v1/descriptors", data=raw,
                                   headers={"Content-Type": "application/octet-stream"})

    async def relays(self, flag: str | None = None, country: str | None = None) -> list[bytes]:
        params = {k: v for k, v in (("flag", flag), ("country", country)) if v}
        body = await self._request("GET", "/v1/relays", params=params)
        return [base64.b64decode(item) for item in body.get("relays", [])]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
