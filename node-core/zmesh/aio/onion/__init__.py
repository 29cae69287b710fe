"""Onion services over a ``NodeDriver``: hosting one (``OnionService``, ``service``) and reaching one
(``OnionClient``, ``client``); docs/onion-services.md, "Introduction and rendezvous".

The protocol is the node's (``zmesh.points`` at relays, ``zmesh.onion.endpoints`` at the ends); this
package decides which circuits to build and when, and waits for the node's events (``common``).
Where descriptors live is behind ``DescriptorDirectory``: ``StoreDescriptors`` (``store``) is the
signal server's ``/v1/onion/`` store, over any ``HttpClient`` (natively the ``SignalClient``, in a
tab the page's fetch). Every circuit is a normal 3-hop path, entering at entry guards when there is
a ``GuardManager`` (``common.Paths``).
"""

from .client import OnionClient
from .common import DescriptorDirectory, OnionLimits
from .service import OnionService
from .store import StoreDescriptors

__all__ = ["DescriptorDirectory", "OnionClient", "OnionLimits", "OnionService", "StoreDescriptors"]
