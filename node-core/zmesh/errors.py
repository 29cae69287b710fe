"""The one exception tree of zmesh.

Every error a user or a peer can cause is a ``ZmeshError``; its subclass says *what* went wrong
and the message says what to do about it. Who is at fault is visible in the class:

    ZmeshError
    ├── ProtocolError        a peer sent bytes that break the wire protocol (malformed, oversized,
    │   │                    out of state); the core turns these into a closed circuit or link
    │   ├── OnionAddressError  a ``.mesh`` service address is malformed or mistyped
    │   └── MultipathError     a multipath peer broke the multipath rules (``reason``: a DestroyReason)
    ├── CryptoError          a signature, MAC or digest did not verify, or a key has the wrong size
    │   └── ConsensusRefused  a directory consensus lacks a majority of valid authority signatures
    │                         or is outside its validity window (names what is missing)
    ├── CircuitError         a circuit could not be built or was torn down (``reason``: a DestroyReason)
    ├── StreamError          a stream was refused or ended abnormally (``reason``: an EndReason)
    ├── ConfigError          a setting or argument is out of range (names the bad key)
    ├── TransportError       a link could not be opened or broke
    │   └── LinkClosed       the link is closed; nothing more will arrive
    ├── ExitPolicyError      an exit refused the target
    ├── OnionAuthError       an onion service's descriptor is for authorised clients, and this is not one
    ├── FECError             forward-error-correction input was inconsistent
    ├── SplitDeliveryError   fewer than k shares of a split message reached the destination
    ├── TlsError             TLS to a destination server (``https://`` fetch) failed
    │   └── CertificateError the server's certificate was refused (``reason`` says which check)
    └── InvalidState         API misuse: the call is not valid in the object's current state
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cells and identity import this module
    from .cells import DestroyReason, EndReason
    from .identity import PeerId


class ZmeshError(Exception):
    """Base of every error zmesh raises on purpose."""


class ProtocolError(ZmeshError):
    """A peer violated the wire protocol. Never carries secret material."""


class OnionAddressError(ProtocolError):
    """A ``.mesh`` onion-service address is malformed: wrong length or alphabet, a checksum that
    does not match (a typo), an unknown version, or no ``.mesh`` suffix."""


class CryptoError(ZmeshError):
    """A cryptographic check failed or a key/signature had the wrong shape."""


def reason_words(reason: Enum) -> str:
    """A reason as a message says it: ``EndReason.CONNECT_REFUSED`` → ``"connect refused"``."""
    return reason.name.replace("_", " ").lower()


class CircuitError(ZmeshError):
    """A circuit failed to build or was destroyed. ``reason`` is the DESTROY's reason, or None when
    no circuit got as far as one (no usable relays, every attempt failed on the way);
    ``failed_peer`` names the hop that did not answer, when known, so a client can avoid it next time."""

    def __init__(self, message: str, reason: DestroyReason | None = None, failed_peer: PeerId | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.failed_peer = failed_peer


class StreamError(ZmeshError):
    """A stream was refused by the exit or closed abnormally; ``reason`` is the END's reason
    (``EndReason.DESTROYED`` when the circuit under it went)."""

    def __init__(self, message: str, reason: EndReason) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(ZmeshError):
    """A configuration value or argument is invalid; the message names the key."""


class TransportError(ZmeshError):
    """A link could not be opened or failed."""


class LinkClosed(TransportError):
    """The link is closed; no more frames will be received or sent."""


class ExitPolicyError(ZmeshError):
    """The exit's policy refuses the requested target."""


class OnionAuthError(ZmeshError):
    """The service encrypts its descriptor to a list of clients' keys and this client's key (or
    lack of one) is not on it. Distinct from a malformed descriptor (``ProtocolError``): the
    descriptor is genuine, this client is just not invited."""


class FECError(ZmeshError):
    """Forward-error-correction input was inconsistent (lying headers, absurd sizes)."""


class SplitDeliveryError(ZmeshError):
    """Fewer than ``needed`` (k) of a split message's ``n`` shares were stored by the destination:
    it cannot rebuild the message. ``failures`` says, share by share, why the others were not."""

    def __init__(self, delivered: int, needed: int, n: int, failures: list[str]) -> None:
        super().__init__(f"split message not delivered: {delivered} of {n} shares stored, {needed} needed; "
                         + "; ".join(failures))
        self.delivered, self.needed, self.n, self.failures = delivered, needed, n, tuple(failures)


class TlsError(ZmeshError):
    """TLS with the destination server (an ``https://`` fetch, end to end through the exit) failed."""


class CertificateError(TlsError):
    """The server's certificate chain was refused; ``reason`` names the check that failed
    ("untrusted", "expired", "not yet valid", "hostname", "usage", "not a CA", "malformed",
    "unsupported"; a signature that does not verify is "untrusted": no trusted root issued it)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"the server's certificate was refused ({reason}): {detail}")
        self.reason = reason


class InvalidState(ZmeshError):
    """The object is not in a state where this call makes sense."""


class MultipathError(ProtocolError):
    """A multipath peer broke the rules (zmesh.multipath): a sequence number outside the reorder
    window, a LINK for a set that does not exist, a second leg under a taken number, a malformed
    message. ``reason`` is the DESTROY reason its legs are closed with (32–35)."""

    def __init__(self, message: str, reason: DestroyReason) -> None:
        super().__init__(message)
        self.reason = reason
class ConsensusRefused(CryptoError):
    """A consensus is not acceptable: too few valid signatures from the configured authorities
    (``missing`` names the fingerprints that did not sign validly) or outside its validity window."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing
