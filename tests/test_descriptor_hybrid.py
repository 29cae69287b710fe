"""Hybrid-signed descriptors (``zmesh.descriptor``, docs/protocol.md §8, docs/directory.md): Ed25519 and
ML-DSA-65 over one body; a verifier requires both and the form cannot be downgraded."""

from __future__ import annotations

import asyncio

import pytest

from zmesh.descriptor import DOMAIN, sign_descriptor, verify_descriptor
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import CryptoError, ProtocolError
from zmesh.identity import Identity

NOW = 1_800_000_000


def signed(provider, **kwargs):
    async def main():
        identity = await Identity.generate(provider)
        seed, _ = await provider.mldsa65_generate()
        return identity, seed, await sign_descriptor(provider, identity, now=NOW,
                                                     addresses={"ws": ("ws://127.1.0.1:1/v1/link",)},
                                                     mldsa65_seed=seed, **kwargs)
    return asyncio.run(main())


def test_hybrid_descriptor_verifies_with_both(provider) -> None:
    _, seed, descriptor = signed(provider)
    parts = unpack_canonical(descriptor.raw, max_size=8192, what="t")
    assert len(parts) == 3
    parsed = asyncio.run(verify_descriptor(provider, descriptor.raw, now=NOW + 1))
    assert parsed.mldsa65 == asyncio.run(provider.mldsa65_public(seed))


def test_either_signature_failing_refuses(provider) -> None:
    _, _, descriptor = signed(provider)
    body, ed, ml = unpack_canonical(descriptor.raw, max_size=8192, what="t")
    for index, broken in ((1, ed), (2, ml)):
        parts = [body, ed, ml]
        parts[index] = bytes([broken[0] ^ 1]) + broken[1:]
        with pytest.raises(CryptoError, match="ML-DSA-65" if index == 2 else "signature does not verify"):
            asyncio.run(verify_descriptor(provider, pack_canonical(parts), now=NOW + 1))


def test_downgrade_and_mismatched_forms_refused(provider) -> None:
    identity, _, descriptor = signed(provider)
    body, ed, ml = unpack_canonical(descriptor.raw, max_size=8192, what="t")
    with pytest.raises(ProtocolError, match="exactly when"):  # ML-DSA signature stripped
        asyncio.run(verify_descriptor(provider, pack_canonical([body, ed]), now=NOW + 1))
    fields = unpack_canonical(body, max_size=8192, what="t")
    del fields["mldsa65"]  # key removed too: the Ed25519 signature no longer covers this body
    stripped = pack_canonical(fields)
    with pytest.raises(CryptoError):
        asyncio.run(verify_descriptor(provider, pack_canonical([stripped, ed]), now=NOW + 1))
    resigned = asyncio.run(provider.ed25519_sign(identity.signing_key, DOMAIN + stripped))
    with pytest.raises(ProtocolError, match="exactly when"):  # an ML-DSA signature with no key for it
        asyncio.run(verify_descriptor(provider, pack_canonical([stripped, resigned, ml]), now=NOW + 1))
    fields["mldsa65"] = b"\x00" * 10
    with pytest.raises(ProtocolError, match="mldsa65 key"):
        asyncio.run(verify_descriptor(provider, pack_canonical([pack_canonical(fields), ed, ml]), now=NOW + 1))


def test_plain_descriptor_unchanged(provider) -> None:
    async def main():
        identity = await Identity.generate(provider)
        plain = await sign_descriptor(provider, identity, now=NOW)
        assert len(unpack_canonical(plain.raw, max_size=8192, what="t")) == 2 and plain.mldsa65 is None
        assert (await verify_descriptor(provider, plain.raw, now=NOW + 1)).mldsa65 is None
    asyncio.run(main())
