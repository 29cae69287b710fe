"""Run the shared vector files (tests/vectors/*.json) against any ``CryptoProvider``.

One implementation of the checks, used by the native test suite and by the browser self-test page,
so both providers are held to exactly the same files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .cells import BODY_SIZE
from .crypto.provider import CryptoProvider
from .encoding import pack_canonical
from .handshake import ClientHandshake, HopKeys, client_finish, server_respond
from .identity import Identity
from .relaycrypto import HopCrypto, onion_encrypt

Check = Callable[[CryptoProvider, dict[str, Any]], Awaitable[bool]]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _keys(case: dict[str, Any]) -> HopKeys:
    return HopKeys(*(_h(case[k]) for k in ("forward_key", "backward_key", "forward_digest_seed",
                                           "backward_digest_seed")))


async def _x25519(p: CryptoProvider, c: dict[str, Any]) -> bool:
    return await p.x25519(_h(c["private"]), _h(c["peer_public"])) == _h(c["shared"])


async def _x25519_pair(p: CryptoProvider, c: dict[str, Any]) -> bool:
    return await p.x25519_public(_h(c["private"])) == _h(c["public"])


async def _ed25519(p: CryptoProvider, c: dict[str, Any]) -> bool:
    secret, public, message, signature = _h(c["secret"]), _h(c["public"]), _h(c["message"]), _h(c["signature"])
    return (await p.ed25519_public(secret) == public and await p.ed25519_sign(secret, message) == signature
            and await p.ed25519_verify(public, signature, message)
            and not await p.ed25519_verify(public, signature, message + b"x"))


async def _hkdf(p: CryptoProvider, c: dict[str, Any]) -> bool:
    return await p.hkdf_sha256(_h(c["ikm"]), _h(c["salt"]), _h(c["info"]), c["length"]) == _h(c["okm"])


async def _mlkem_keygen(p: CryptoProvider, c: dict[str, Any]) -> bool:
    return await p.mlkem768_public(_h(c["d"]) + _h(c["z"])) == _h(c["ek"])


async def _mlkem_decaps(p: CryptoProvider, c: dict[str, Any]) -> bool:
    return await p.mlkem768_decapsulate(_h(c["d"]) + _h(c["z"]), _h(c["c"])) == _h(c["k"])


async def _mldsa_keygen(p: CryptoProvider, c: dict[str, Any]) -> bool:
    return await p.mldsa65_public(_h(c["seed"])) == _h(c["pk"])


async def _mldsa_sigver(p: CryptoProvider, c: dict[str, Any]) -> bool:
    """The vector's verdict, and for a valid case also a fresh (hedged) signature from its seed."""
    seed, public, message, signature = _h(c["seed"]), _h(c["pk"]), _h(c["message"]), _h(c["signature"])
    if await p.mldsa65_verify(public, signature, message) != c["valid"]:
        return False
    return not c["valid"] or await p.mldsa65_verify(public, await p.mldsa65_sign(seed, message), message)


async def _handshake(p: CryptoProvider, c: dict[str, Any]) -> bool:
    identity = await Identity.from_bytes(p, pack_canonical({
        "v": 1, "ed25519": _h(c["relay_ed25519_secret"]), "x25519": _h(c["relay_x25519_secret"]),
        "mlkem768_seed": _h(c["relay_mlkem768_seed"])}))
    y, create = _h(c["relay_y25519_secret"]), _h(c["create"])
    created, keys = await server_respond(p, identity, create, (y, await p.x25519_public(y)))
    state = ClientHandshake(identity.peer_id, identity.onion_keys, _h(c["client_x25519_secret"]),
                            create[64:96], create[96:], _h(c["mlkem_shared_secret"]))
    return created == _h(c["created"]) and keys == _keys(c) and await client_finish(p, state, created) == keys


async def _relay_crypto(p: CryptoProvider, c: dict[str, Any]) -> bool:
    hops = [HopCrypto(p, _keys(hop)) for hop in c["hops"]]
    plain = _h(c["unsealed_plaintext"])
    bodies = [bytearray(plain[i:i + BODY_SIZE]) for i in range(0, len(plain), BODY_SIZE)]
    return await onion_encrypt(hops, c["target_hop"], bodies) == _h(c["ciphertext"])


CHECKS: dict[str, list[tuple[str, Check]]] = {
    "x25519_rfc7748.json": [("cases", _x25519), ("keypairs", _x25519_pair)],
    "ed25519_rfc8032.json": [("cases", _ed25519)],
    "hkdf_sha256_rfc5869.json": [("cases", _hkdf)],
    "mlkem768_keygen.json": [("cases", _mlkem_keygen)],
    "mlkem768_encap_decap.json": [("cases", _mlkem_decaps)],
    "mldsa65_keygen_acvp.json": [("cases", _mldsa_keygen)],
    "mldsa65_sigver.json": [("cases", _mldsa_sigver)],
    "zmesh_handshake.json": [("cases", _handshake)],
    "zmesh_relay_crypto.json": [("cases", _relay_crypto)],
}


async def check_vectors(provider: CryptoProvider, files: dict[str, Any]) -> tuple[int, list[str]]:
    """Check every case of the given files (file name → parsed JSON); return (cases run, failures)."""
    run, failures = 0, []
    for name, data in files.items():
        for key, check in CHECKS[name]:
            for case in data[key]:
                run += 1
                try:
                    ok = await check(provider, case)
                except Exception as exc:  # report, don't stop: the page shows every result
                    ok, case = False, {**case, "name": f"{case.get('name', '?')} ({type(exc).__name__}: {exc})"}
                if not ok:
                    failures.append(f"{name}: {case.get('name', '?')}")
    return run, failures
