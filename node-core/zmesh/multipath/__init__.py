"""Multipath streams, Conflux-style (Tor proposal 329; docs/protocol.md "Multipath"), sans-IO.

One stream is split over two circuits (its *legs*) that share only the exit. The legs are ordinary
streams to the exit's multipath service (empty host, ``MULTIPATH_PORT``); inside them the two ends
exchange multipath messages (``wire``): LINK/LINKED join a leg to a set named by a secret nonce
(``linking``), DATA carries a sequence number so the receiver can restore the order across legs
(``sequencing.Reorder``), ACK lets the sender forget what arrived and bounds what the receiver can
be made to buffer (``sequencing.SendBuffer``), and ``scheduler`` picks the lower-RTT leg that has
congestion window to spare. The asyncio glue is ``zmesh.aio.multipath``.
"""

from .linking import LinkRegistry, MultipathSet
from .scheduler import LegView, pick_leg
from .sequencing import Reorder, SendBuffer
from .wire import MULTIPATH_PORT, MessageReader, MultipathCommand

__all__ = ["MULTIPATH_PORT", "LegView", "LinkRegistry", "MessageReader", "MultipathCommand", "MultipathSet",
           "Reorder", "SendBuffer", "pick_leg"]
