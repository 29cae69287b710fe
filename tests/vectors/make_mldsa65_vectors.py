"""Regenerate the ML-DSA-65 vector files (mldsa65_*.json).

``mldsa65_keygen_acvp.json``: NIST ACVP ML-DSA keyGen (FIPS 204) cases for ML-DSA-65, copied from the
ACVP-Server file ``gen-val/json-files/ML-DSA-keyGen-FIPS204/internalProjection.json`` (the copy that
the dilithium-py 1.5.1 sdist ships under ``assets/``, from ACVP-Server release v1.1.0.35). Key
generation from the 32-byte seed is the same for the internal and external interfaces.

``mldsa65_sigver.json``: the ACVP sigVer files reachable here test only ``Verify_internal`` (the
caller passes M' itself), which neither OpenSSL nor WebCrypto exposes; the provider API is the
external, pure, empty-context one (M' = 0x00 ‖ 0x00 ‖ M). So these are *cross-implementation*
cases: OpenSSL (``cryptography``) signs fixed messages with fixed seeds, and dilithium-py (pure
Python, an independent implementation) must agree on every verdict, valid and forged alike. OpenSSL
signs hedged (randomised), so a rerun writes other, equally valid, signatures.

Run from the repository root (dilithium-py comes with the dev extra), with ASSETS the folder that
holds ``ML-DSA-keyGen-FIPS204/`` (the dilithium-py sdist's ``assets/``: ``pip download --no-deps
--no-binary :all: dilithium-py``, then unpack it): ``python tests/vectors/make_mldsa65_vectors.py ASSETS``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from dilithium_py.ml_dsa import ML_DSA_65

HERE = Path(__file__).parent
KEYGEN_CASES = 5
HINT_BYTES = 55 + 6  # omega + k: the hint encoding closes an ML-DSA-65 signature (FIPS 204 Alg. 20)


def fixed(label: str, size: int = 32) -> bytes:
    return hashlib.shake_256(f"zmesh-mldsa-vector:{label}".encode()).digest(size)


def openssl_verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def keygen(assets: Path) -> dict:
    data = json.loads((assets / "ML-DSA-keyGen-FIPS204" / "internalProjection.json").read_text())
    group = next(g for g in data["testGroups"] if g["parameterSet"] == "ML-DSA-65")
    cases = []
    for test in group["tests"][:KEYGEN_CASES]:
        seed, pk = bytes.fromhex(test["seed"]), bytes.fromhex(test["pk"])
        assert mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw() == pk
        cases.append({"name": f"ACVP keyGen tgId {group['tgId']} tcId {test['tcId']}",
                      "seed": seed.hex(), "pk": pk.hex()})
    return {"source": f"NIST ACVP-Server ML-DSA-keyGen-FIPS204 internalProjection.json (vsId {data['vsId']}), "
                      "ML-DSA-65 group, first cases; see make_mldsa65_vectors.py", "cases": cases}


def sigver() -> dict:
    cases = []

    def case(name: str, seed: bytes, public: bytes, message: bytes, signature: bytes) -> None:
        valid = openssl_verifies(public, signature, message)
        assert ML_DSA_65.verify(public, message, signature) == valid, f"implementations disagree: {name}"
        cases.append({"name": name, "seed": seed.hex(), "pk": public.hex(), "message": message.hex(),
                      "signature": signature.hex(), "valid": valid})

    for index, size in enumerate((0, 1, 33, 1000)):
        seed, message = fixed(f"seed{index}"), fixed(f"message{index}", size) if size else b""
        key = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        public, signature = key.public_key().public_bytes_raw(), key.sign(message)
        assert ML_DSA_65.key_derive(seed)[0] == public
        case(f"valid, {size}-byte message", seed, public, message, signature)
        if index == 2:
            flipped = bytearray(signature)
            flipped[100] ^= 1
            case("one bit of z flipped", seed, public, message, bytes(flipped))
            case("message changed", seed, public, message[:-1] + bytes([message[-1] ^ 1]), signature)
            other = mldsa.MLDSA65PrivateKey.from_seed_bytes(fixed("other")).public_key().public_bytes_raw()
            case("another key's public key", seed, other, message, signature)
            hints = bytearray(signature)
            hints[-HINT_BYTES:] = bytes(HINT_BYTES - 6) + bytes([5, 4, 3, 2, 1, 0])  # decreasing counts
            case("malformed hint encoding", seed, public, message, bytes(hints))
    assert [c["valid"] for c in cases] == [True, True, True, False, False, False, False, True]
    return {"source": "FIPS 204 ML-DSA-65 (external, pure, empty context), cross-implementation: OpenSSL "
                      "(cryptography) signs, dilithium-py agrees on every verdict; see make_mldsa65_vectors.py",
            "cases": cases}


def main() -> None:
    for name, data in (("mldsa65_keygen_acvp.json", keygen(Path(sys.argv[1]))), ("mldsa65_sigver.json", sigver())):
        (HERE / name).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
