"""Per-source-address link slots at a relay's listener: one address cannot take every link.

The node caps links globally (``NodeLimits.max_links``); this caps how many of them one remote
address may hold, checked before the WebSocket upgrade so a refusal costs an HTTP answer. Addresses
are held only as counter keys while their links are open, and never logged.
"""

from __future__ import annotations

from collections import Counter

from zmesh.errors import ConfigError


class AddressSlots:
    def __init__(self, per_address: int) -> None:
        if per_address < 1:
            raise ConfigError(f"relay.max_links_per_address must be at least 1, got {per_address}")
        self.per_address = per_address
        self._held: Counter[str] = Counter()

    def take(self, address: str) -> bool:
        """Take a slot for a link from ``address``; False when that address holds its maximum."""
        if self._held[address] >= self.per_address:
            return False
        self._held[address] += 1
        return True

    def give_back(self, address: str) -> None:
        self._held[address] -= 1
        if self._held[address] <= 0:
            del self._held[address]
