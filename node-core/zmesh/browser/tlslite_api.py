"""The parts of tlslite-ng the tab's ``https://`` uses, imported without its package ``__init__``.

tlslite-ng's ``__init__`` imports its whole API, including ``dbm`` (for a password database nothing
here uses), which Pyodide lacks. So the package is registered without running that ``__init__``,
and its submodules import on their own.
"""

from __future__ import annotations

import importlib.util
import sys

if "tlslite" not in sys.modules:
    _spec = importlib.util.find_spec("tlslite")
    if _spec is None:
        raise ImportError("tlslite-ng is not installed (the page loads it as a wheel)")
    sys.modules["tlslite"] = importlib.util.module_from_spec(_spec)

from tlslite.errors import TLSAbruptCloseError  # type: ignore[import-not-found]  # noqa: E402
from tlslite.handshakesettings import HandshakeSettings  # type: ignore[import-not-found]  # noqa: E402
from tlslite.tlsconnection import TLSConnection  # type: ignore[import-not-found]  # noqa: E402
from tlslite.x509 import X509  # type: ignore[import-not-found]  # noqa: E402

__all__ = ["X509", "HandshakeSettings", "TLSAbruptCloseError", "TLSConnection"]
