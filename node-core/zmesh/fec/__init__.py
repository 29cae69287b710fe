"""Tetrys forward error correction (RFC 9407) for unordered/unreliable links, sans-IO.

``gf256`` (field and whole-symbol kernels) → ``tetrys`` (encoder/decoder) → ``adaptive``
(repair-rate controller), ``budget`` (repair limits) → ``endpoint`` (``FecEndpoint``, one end's
policy); ``channels`` says which cells travel under FEC. Standard library only, so it runs under
Pyodide; the asyncio links that drive it are in ``zmesh.aio.fec``. See docs/fec.md for the wire format.
"""

from .adaptive import RepairRateController
from .budget import RepairBudget, RepairLimits
from .endpoint import FecEndpoint, LostFrames
from .tetrys import Ack, Delivered, Gap, TetrysDecoder, TetrysEncoder

__all__ = ["Ack", "Delivered", "FecEndpoint", "Gap", "LostFrames", "RepairBudget", "RepairLimits",
           "RepairRateController", "TetrysDecoder", "TetrysEncoder"]
