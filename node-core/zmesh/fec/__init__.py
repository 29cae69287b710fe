"""Tetrys forward error correction (RFC 9407) for unordered/unreliable links."""

from .adaptive import RepairRateController
from .link import FecLink
from .tetrys import Delivered, Gap, TetrysDecoder, TetrysEncoder

__all__ = ["Delivered", "FecLink", "Gap", "RepairRateController", "TetrysDecoder", "TetrysEncoder"]
