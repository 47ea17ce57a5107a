"""drand beacon rounds: chain info, BLS verification, round times (pure, no I/O).

drand (https://drand.love) publishes, every ``period`` seconds from ``genesis_time``, a
round ``R`` whose signature is a BLS12-381 threshold signature on a message fixed by
the round number alone (unchained schemes) or by ``R`` and the previous signature
(chained). BLS signatures are **unique**: for one public key and one message exactly one
valid signature exists, so neither a node nor anyone holding round ``R`` can choose its
value, and nobody below the threshold can compute it before it is published.

Schemes (drand's ``crypto/schemes.go``), message ``m`` and hash-to-curve DST:

* ``bls-unchained-g1-rfc9380`` (quicknet): signature on G1 (48 bytes), key on G2 (96);
  ``m = SHA-256(u64 BE round)``, DST ``BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_``.
* ``bls-unchained-on-g1``: as above but DST ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_``.
* ``pedersen-bls-chained`` (mainnet ``default``): signature on G2 (96), key on G1 (48);
  ``m = SHA-256(previous signature || u64 BE round)``, DST of G2.
* ``pedersen-bls-unchained``: signature on G2, ``m = SHA-256(u64 BE round)``.

randomness(R) = ``SHA-256(signature)``. Round ``R`` (from 1) is published at
``genesis_time + (R - 1) * period`` (unix seconds).

Invariants: a point is accepted only in its canonical compressed encoding (re-encoding
gives the same bytes) and inside the prime-order subgroup, so one round has exactly one
accepted signature byte string, hence one randomness. The chain hash is drand's
``SHA-256(u32 BE period || i64 BE genesis_time || public key || genesis seed [|| beacon
id unless "default"])``; it does not cover the scheme, so an auditor pins the whole chain
info (:data:`KNOWN_CHAINS` or a file), not only its hash.

Trusts: the pinned chain info, and that fewer than the threshold of the chain's nodes
collude (they could otherwise compute a round early).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from pyblst import BlstP1Element, BlstP2Element, final_verify, miller_loop

from .errors import MalformedError, SignatureError

DST_G1 = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_"
DST_G2 = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_"
QUICKNET = "bls-unchained-g1-rfc9380"
CHAINED = "pedersen-bls-chained"
# scheme -> (signature on G1?, DST, chained?)
SCHEMES: dict[str, tuple[bool, bytes, bool]] = {
    QUICKNET: (True, DST_G1, False),
    "bls-unchained-on-g1": (True, DST_G2, False),
    CHAINED: (False, DST_G2, True),
    "pedersen-bls-unchained": (False, DST_G2, False),
}
_R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001  # group order
_G1 = bytes.fromhex("97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83f"
                    "f97a1aeffb3af00adb22c6bb")
_G2 = bytes.fromhex("93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf112"
                    "13945d57e5ac7d055d042b7e024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02"
                    "b4510b647ae3d1770bac0326a805bbefd48056c8c121bdb8")
MAX_ROUND = (1 << 63) - 1


def _hex(v: object, what: str, size: int | None = None) -> bytes:
    try:
        b = bytes.fromhex(v) if isinstance(v, str) else b""
    except ValueError:
        b = b""
    if not b or (size is not None and len(b) != size):
        raise MalformedError(f"{what} is not {'' if size is None else f'{size} bytes of '}hex",
                             hint="copy it from the beacon's /info or /public/<round> reply")
    return b


def _int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MalformedError(f"{what} must be a non-negative integer")
    return v


def _point(data: bytes, on_g1: bool, what: str) -> Any:
    """Decode a compressed point: canonical encoding, in the prime-order subgroup."""
    cls = BlstP1Element if on_g1 else BlstP2Element
    if len(data) != (48 if on_g1 else 96):
        raise SignatureError(f"{what} has {len(data)} bytes, expected {48 if on_g1 else 96} "
                             f"(a compressed G{1 if on_g1 else 2} point)")
    try:
        p = cls().uncompress(data)
    except ValueError:
        raise SignatureError(f"{what} is not a point of BLS12-381 G{1 if on_g1 else 2}") from None
    if p.compress() != data:
        raise SignatureError(f"{what} is not in canonical compressed form")
    if p.scalar_mul(_R).compress() != cls().compress() or p.compress() == cls().compress():
        raise SignatureError(f"{what} is the identity or outside the prime-order subgroup")
    return p


@dataclass(frozen=True)
class ChainInfo:
    public_key: bytes
    period: int
    genesis_time: int
    genesis_seed: bytes
    scheme: str
    beacon_id: str = "default"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise MalformedError(f"unsupported drand scheme {self.scheme!r}",
                                 hint=f"supported: {', '.join(sorted(SCHEMES))}")
        if self.period < 1 or self.genesis_time < 0:
            raise MalformedError("drand chain info needs period >= 1 and genesis_time >= 0")
        key_on_g1 = not SCHEMES[self.scheme][0]
        if len(self.public_key) != (48 if key_on_g1 else 96):
            raise MalformedError(f"a {self.scheme} public key has {48 if key_on_g1 else 96} "
                                 f"bytes, got {len(self.public_key)}")

    @property
    def hash(self) -> bytes:
        """drand's chain hash (common/chain/info.go ``Info.Hash``)."""
        h = hashlib.sha256(struct.pack(">Iq", self.period, self.genesis_time))
        h.update(self.public_key + self.genesis_seed)
        if self.beacon_id not in ("", "default"):
            h.update(self.beacon_id.encode())
        return h.digest()

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> ChainInfo:
        """drand's ``/info`` JSON, v1 (``hash``, ``groupHash``, ``schemeID``, ``metadata``)
        or v2 (``chain_hash``, ``genesis_seed``, ``scheme``, ``beacon_id``). A stated hash
        must equal the hash recomputed from the fields."""
        try:
            d = data if isinstance(data, dict) else json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MalformedError("drand chain info is not JSON") from None
        if not isinstance(d, dict):
            raise MalformedError("drand chain info is not a JSON object")
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        beacon_id = d.get("beacon_id", meta.get("beaconID", "default"))
        info = cls(public_key=_hex(d.get("public_key"), "public_key"),
                   period=_int(d.get("period"), "period"),
                   genesis_time=_int(d.get("genesis_time"), "genesis_time"),
                   genesis_seed=_hex(d.get("genesis_seed", d.get("groupHash")), "genesis seed"),
                   scheme=str(d.get("scheme", d.get("schemeID", CHAINED))),
                   beacon_id=str(beacon_id or "default"))
        stated = d.get("chain_hash", d.get("hash"))
        if stated is not None and stated != info.hash_hex:
            raise MalformedError(f"drand chain info states hash {str(stated)[:64]} but its "
                                 f"fields hash to {info.hash_hex}",
                                 hint="the chain info was altered; fetch it again")
        return info

    def to_json(self) -> dict[str, Any]:
        """drand's v1 ``/info`` form."""
        return {"public_key": self.public_key.hex(), "period": self.period,
                "genesis_time": self.genesis_time, "hash": self.hash_hex,
                "groupHash": self.genesis_seed.hex(), "schemeID": self.scheme,
                "metadata": {"beaconID": self.beacon_id}}

    def round_time(self, round_: int) -> int:
        """Unix second at which round ``round_`` (>= 1) is published."""
        return self.genesis_time + (round_ - 1) * self.period

    def round_at(self, unix: float) -> int:
        """The latest round published at time ``unix`` (0 before genesis)."""
        if unix < self.genesis_time:
            return 0
        return int((unix - self.genesis_time) // self.period) + 1


@dataclass(frozen=True)
class Round:
    round: int
    signature: bytes
    previous_signature: bytes | None = None

    @property
    def randomness(self) -> bytes:
        return hashlib.sha256(self.signature).digest()

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> Round:
        try:
            d = data if isinstance(data, dict) else json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MalformedError("drand round is not JSON") from None
        if not isinstance(d, dict):
            raise MalformedError("drand round is not a JSON object")
        r = _int(d.get("round"), "round")
        prev = d.get("previous_signature")
        out = cls(r, _hex(d.get("signature"), "signature"),
                  _hex(prev, "previous_signature") if prev else None)
        rnd = d.get("randomness")
        if rnd is not None and rnd != out.randomness.hex():
            raise MalformedError(f"round {r}: stated randomness is not SHA-256(signature)")
        return out

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"round": self.round, "randomness": self.randomness.hex(),
                             "signature": self.signature.hex()}
        if self.previous_signature is not None:
            d["previous_signature"] = self.previous_signature.hex()
        return d


def round_message(info: ChainInfo, r: Round) -> bytes:
    chained = SCHEMES[info.scheme][2]
    if chained and r.previous_signature is None:
        raise SignatureError(f"round {r.round} of a chained beacon lacks previous_signature")
    prefix = (r.previous_signature or b"") if chained else b""
    return hashlib.sha256(prefix + struct.pack(">Q", r.round)).digest()


def verify_round(info: ChainInfo, r: Round, expect_round: int | None = None) -> None:
    """Verify ``r``'s BLS signature under ``info``; raise :class:`SignatureError` if not."""
    if expect_round is not None and r.round != expect_round:
        raise SignatureError(f"got drand round {r.round}, expected round {expect_round}")
    if not 1 <= r.round <= MAX_ROUND:
        raise SignatureError(f"drand round {r.round} out of range")
    on_g1, dst, _ = SCHEMES[info.scheme]
    sig = _point(r.signature, on_g1, f"round {r.round} signature")
    pk = _point(info.public_key, not on_g1, "chain public key")
    msg = round_message(info, r)
    if on_g1:
        h = BlstP1Element().hash_to_group(msg, dst)
        ok = final_verify(miller_loop(sig, BlstP2Element().uncompress(_G2)), miller_loop(h, pk))
    else:
        h2 = BlstP2Element().hash_to_group(msg, dst)
        ok = final_verify(miller_loop(BlstP1Element().uncompress(_G1), sig),
                          miller_loop(pk, h2))
    if not ok:
        raise SignatureError(f"drand round {r.round}: invalid signature for chain "
                             f"{info.hash_hex[:16]}… ({info.scheme})",
                             hint="the round, the signature or the pinned chain is wrong")


# --- a local 1-of-1 beacon (quicknet scheme), for tests and demos ----------------------

@dataclass(frozen=True)
class BeaconKey:
    secret: int
    period: int
    genesis_time: int
    beacon_id: str = "potd-local"

    @classmethod
    def generate(cls, period: int, genesis_time: int) -> BeaconKey:
        return cls(int.from_bytes(os.urandom(48), "big") % (_R - 1) + 1, period, genesis_time)

    @property
    def info(self) -> ChainInfo:
        pk = BlstP2Element().uncompress(_G2).scalar_mul(self.secret).compress()
        return ChainInfo(pk, self.period, self.genesis_time, hashlib.sha256(pk).digest(),
                         QUICKNET, self.beacon_id)

    def sign(self, round_: int) -> Round:
        msg = hashlib.sha256(struct.pack(">Q", round_)).digest()
        sig = BlstP1Element().hash_to_group(msg, DST_G1).scalar_mul(self.secret)
        return Round(round_, sig.compress())

    def to_json(self) -> dict[str, Any]:
        return {"type": "potd-drand-local-key-v1", "scheme": QUICKNET,
                "secret": f"{self.secret:064x}", "period": self.period,
                "genesis_time": self.genesis_time, "beacon_id": self.beacon_id}

    @classmethod
    def from_json(cls, data: bytes | str) -> BeaconKey:
        try:
            d = json.loads(data)
            secret = int(d["secret"], 16)
            key = cls(secret, int(d["period"]), int(d["genesis_time"]), str(d["beacon_id"]))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise MalformedError("not a potd local beacon key file",
                                 hint="create one with `potd beacon keygen`") from None
        if not 0 < secret < _R or key.period < 1:
            raise MalformedError("beacon key out of range")
        return key


# Public chains an auditor may pin by name or hash (from drand's own test data and docs;
# see tests/data/drand/README.md).
KNOWN_CHAINS: dict[str, ChainInfo] = {
    "quicknet": ChainInfo(
        public_key=bytes.fromhex(
            "83cf0f2896adee7eb8b5f01fcad3912212c437e0073e911fb90022d3e760183c8c4b450b6a0a"
            "6c3ac6a5776a2d1064510d1fec758c921cc22b0e17e63aaf4bcb5ed66304de9cf809bd274ca7"
            "3bab4af5a6e9c76a4bc09e76eae8991ef5ece45a"),
        period=3, genesis_time=1692803367, scheme=QUICKNET, beacon_id="quicknet",
        genesis_seed=bytes.fromhex(
            "f477d5c89f21a17c863a7f937c6a6d15859414d2be09cd448d4279af331c5d3e")),
    "mainnet": ChainInfo(
        public_key=bytes.fromhex(
            "868f005eb8e6e4ca0a47c8a77ceaa5309a47978a7c71bc5cce96366b5d7a569937c529eeda66"
            "c7293784a9402801af31"),
        period=30, genesis_time=1595431050, scheme=CHAINED, beacon_id="default",
        genesis_seed=bytes.fromhex(
            "176f93498eac9ca337150b46d21dd58673ea4e3581185f869672e59fa4cb390a")),
}


def known_chain(name_or_hash: str) -> ChainInfo | None:
    if name_or_hash in KNOWN_CHAINS:
        return KNOWN_CHAINS[name_or_hash]
    for info in KNOWN_CHAINS.values():
        if info.hash_hex == name_or_hash.lower():
            return info
    return None
