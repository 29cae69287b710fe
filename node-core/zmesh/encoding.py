"""Canonical msgpack: one byte string per value, so signatures cover exactly what was meant.

Rules: maps have text keys in sorted order, bytes are msgpack ``bin``, text is ``str``, integers use
msgpack's shortest form (the library's default). ``unpack_canonical`` refuses anything that does
not re-encode to the very same bytes, so two encodings of one descriptor can never both verify.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ProtocolError


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def pack_canonical(value: Any) -> bytes:
    """Encode ``value`` canonically (dict keys sorted, tuples as arrays)."""
    return msgpack.packb(_sorted(value), use_bin_type=True)


def unpack_canonical(data: bytes, *, max_size: int, what: str) -> Any:
    """Decode untrusted bytes; raise ``ProtocolError`` unless they are canonical and small enough."""
    if len(data) > max_size:
        raise ProtocolError(f"{what} is {len(data)} bytes; the limit is {max_size}")
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=max_size, max_bin_len=max_size,
            max_array_len=1024, max_map_len=64, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"{what} is not valid msgpack") from exc
    if pack_canonical(value) != bytes(data):
        raise ProtocolError(f"{what} is not canonically encoded")
    return value
