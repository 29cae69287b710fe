"""``zmesh status``: a client's ``/v1/circuits`` document as a table a person can read."""

from __future__ import annotations

from typing import Any

from zmesh.errors import ProtocolError

SHORT = 10  # characters of a PeerId shown, as ``PeerId.short``
COLUMNS = ("ID", "PURPOSE", "AGE", "STREAMS", "ISOLATION", "PATH")


def circuits_table(document: Any) -> str:
    """Guards first, then one row per circuit (path as short PeerIds, first hop first)."""
    try:
        guards = [str(peer)[:SHORT] for peer in document["guards"]]
        rows = [(str(c["id"]), str(c["purpose"]), f"{float(c['age_s']):.0f}s", str(int(c["streams"])),
                 "-" if c["isolation"] is None else str(c["isolation"]),
                 " > ".join(str(peer)[:SHORT] for peer in c["path"]))
                for c in document["circuits"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"the control port's answer is not a /v1/circuits document ({exc!r})") from exc
    lines = [f"guards: {' '.join(guards) if guards else '(none)'}", ""]
    if not rows:
        return "\n".join([*lines, "no circuits"])
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for row in [COLUMNS, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
