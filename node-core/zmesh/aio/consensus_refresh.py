"""Keeping a ``ConsensusView`` fresh in the background, for native clients and tabs alike."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from ..consensus_view import RETRY_AFTER, ConsensusView
from ..errors import ZmeshError

log = logging.getLogger(__name__)


async def keep_fresh(view: ConsensusView) -> None:
    """Fetch each new consensus soon after the current one's fresh-until, used or not, so neither
    the node's view nor its cache goes stale while it idles (run as a task; cancel to stop)."""
    while True:
        fresh_until = view.consensus.period.fresh_until if view.consensus is not None else 0
        await asyncio.sleep(max(RETRY_AFTER / 5, fresh_until - time.time() + random.uniform(0, 1)))
        try:
            await view.relays()
        except (ZmeshError, OSError) as exc:  # a browser's fetch raises OSError when an origin is unreachable
            log.warning("no usable consensus from the authorities: %s", exc)
