"""Canonical msgpack: one byte string per value, so signatures cover exactly what was meant.

Rules: maps have text keys in sorted order, bytes are msgpack ``bin``, text is ``str``, integers use
msgpack's shortest form (the library's default). ``unpack_canonical`` refuses anything that does
not re-encode to the very same bytes, so two encodings of one descriptor can never both verify.
It raises only ``ProtocolError``, whatever the bytes: our values are a few levels deep, so
anything nested deeper than ``MAX_DEPTH`` is refused before it is walked.
"""

from __future__ import annotations

import base64
from typing import Any

import msgpack

from .errors import ProtocolError

MAX_DEPTH = 16


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def _check_shape(value: Any, what: str, depth: int = 0) -> None:
    """Text map keys only, nesting at most ``MAX_DEPTH``: what ``pack_canonical`` can re-encode."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{what} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ProtocolError(f"{what} has a map key that is not text")
        for item in value.values():
            _check_shape(item, what, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_shape(item, what, depth + 1)


def pack_canonical(value: Any) -> bytes:
    """Encode ``value`` canonically (dict keys sorted, tuples as arrays)."""
    return msgpack.packb(_sorted(value), use_bin_type=True)


def unpack_canonical(data: bytes, *, max_size: int, what: str, max_items: int = 1024) -> Any:
    """Decode untrusted bytes; raise ``ProtocolError`` unless they are canonical and small enough
    (``max_items``: the longest array allowed, e.g. a consensus's relay list)."""
    if len(data) > max_size:
        raise ProtocolError(f"{what} is {len(data)} bytes; the limit is {max_size}")
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=max_size, max_bin_len=max_size,
            max_array_len=max_items, max_map_len=64, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"{what} is not valid msgpack") from exc
    _check_shape(value, what)
    if pack_canonical(value) != bytes(data):
        raise ProtocolError(f"{what} is not canonically encoded")
    return value


def decode_base64(value: object, what: str) -> bytes:
    """Standard padded base64 text from a peer or server; ``ProtocolError`` for anything else
    (non-text, non-ASCII, bad padding or alphabet)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:  # binascii.Error, or a str with non-ASCII characters
        raise ProtocolError(f"{what} must be standard padded base64") from exc
