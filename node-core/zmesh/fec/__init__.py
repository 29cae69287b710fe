"""Tetrys forward error correction (RFC 9407) for unordered/unreliable links.

``gf256`` (field and whole-symbol kernels) → ``tetrys`` (sans-IO encoder/decoder) →
``adaptive`` (repair-rate controller), ``budget`` (repair limits) → ``link`` (sans-IO
``FecEndpoint`` and asyncio ``FecLink``).
Standard library only, so it runs under Pyodide. See docs/fec.md for the wire format.
"""

from .adaptive import RepairRateController
from .budget import RepairBudget, RepairLimits
from .link import FecEndpoint, FecLink, LostFrames
from .tetrys import Ack, Delivered, Gap, TetrysDecoder, TetrysEncoder

__all__ = ["Ack", "Delivered", "FecEndpoint", "FecLink", "Gap", "LostFrames", "RepairBudget", "RepairLimits",
           "RepairRateController", "TetrysDecoder", "TetrysEncoder"]
