"""drand rounds: real recorded rounds verify (no network), any change fails; the local
beacon speaks drand's HTTP API; the seed/challenge timing rules of prover.beacon."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from ledger.beacon_client import BeaconClient, BeaconError, load_chain
from ledger.beacon_server import BeaconServer
from ledger.cosignature import cosign
from ledger.drand import KNOWN_CHAINS, BeaconKey, ChainInfo, Round, verify_round
from ledger.errors import MalformedError, SignatureError, UsageError, VerificationError
from ledger.note import ALG_COSIGNATURE_V1, Checkpoint, Signer, sign_checkpoint
from prover.beacon import attested_ms, challenge_v2, pick_round

DATA = Path(__file__).parent / "data" / "drand"
CHAINS = {"quicknet": "52db9ba70e0cc0f6eaf7803dd07447a1f5477735fd3f661792ba94600c84e971",
          "mainnet": "8990e7a9aaed2ffed73dbd7092123d6f289930540d7651336225dc172e51b2ce",
          "walkthrough-g1": "af8b6fc95693b058a3a59efe586eb31c2c352fe00cf40c62a427d87c34f7a235"}


def _chain(name: str) -> tuple[ChainInfo, list[Round]]:
    info = ChainInfo.from_json((DATA / f"{name}-info.json").read_bytes())
    rounds = [Round.from_json(r) for r in json.loads((DATA / f"{name}-rounds.json").read_text())]
    return info, rounds


@pytest.mark.parametrize("name", list(CHAINS))
def test_recorded_rounds_verify(name: str) -> None:
    info, rounds = _chain(name)
    assert info.hash_hex == CHAINS[name]  # recomputed from the fields (drand's Info.Hash)
    for r in rounds:
        verify_round(info, r, r.round)


def test_known_chains_match_the_recorded_info() -> None:
    for name in ("quicknet", "mainnet"):
        assert KNOWN_CHAINS[name] == _chain(name)[0]
        assert load_chain(name) == load_chain(CHAINS[name]) == KNOWN_CHAINS[name]
    assert load_chain(str(DATA / "walkthrough-g1-info.json")).hash_hex == CHAINS["walkthrough-g1"]
    with pytest.raises(UsageError):
        load_chain("nosuchchain")


@pytest.mark.parametrize("name", list(CHAINS))
def test_any_change_fails(name: str) -> None:
    info, [r, *_] = _chain(name)
    for i in (0, 5, len(r.signature) - 1):  # flipped bits anywhere in the signature
        sig = bytearray(r.signature)
        sig[i] ^= 0x01
        with pytest.raises(SignatureError):
            verify_round(info, Round(r.round, bytes(sig), r.previous_signature))
    with pytest.raises(SignatureError):  # the signature of another round
        verify_round(info, Round(r.round + 1, r.signature, r.previous_signature))
    with pytest.raises(SignatureError):  # a round other than the committed one
        verify_round(info, r, r.round + 1)
    other = KNOWN_CHAINS["mainnet" if name != "mainnet" else "quicknet"]
    with pytest.raises((SignatureError, MalformedError)):  # another chain's key
        verify_round(other, r)
    if r.previous_signature is not None:  # chained: the previous signature is signed too
        prev = bytes([r.previous_signature[0] ^ 1]) + r.previous_signature[1:]
        with pytest.raises(SignatureError):
            verify_round(info, Round(r.round, r.signature, prev))
        with pytest.raises(SignatureError):
            verify_round(info, Round(r.round, r.signature, None))


def test_one_signature_per_round() -> None:
    """The randomness is unique: no second encoding of the point is accepted."""
    info, [r] = _chain("quicknet")
    sig = bytearray(r.signature)
    sig[0] ^= 0x20  # the sign flag: the negated point, a different (invalid) signature
    with pytest.raises(SignatureError):
        verify_round(info, Round(r.round, bytes(sig)))
    with pytest.raises(SignatureError):  # the infinity encoding
        verify_round(info, Round(r.round, bytes([0xC0]) + bytes(47)))
    with pytest.raises(SignatureError):  # uncompressed form (96 bytes) of a G1 point
        verify_round(info, Round(r.round, r.signature + bytes(48)))


def test_chain_info_json_is_checked() -> None:
    d = json.loads((DATA / "quicknet-info.json").read_text())
    d["period"] = 4
    with pytest.raises(MalformedError, match="hash"):
        ChainInfo.from_json(json.dumps(d))
    with pytest.raises(MalformedError):
        ChainInfo.from_json(b"[]")
    with pytest.raises(MalformedError):
        Round.from_json({"round": 1, "signature": "00", "randomness": "11"})


def test_local_key_signs_verifiable_rounds(tmp_path: Path) -> None:
    key = BeaconKey.generate(1, 1000)
    again = BeaconKey.from_json(json.dumps(key.to_json()))
    assert again.info == key.info
    r = key.sign(7)
    verify_round(key.info, r, 7)
    assert again.sign(7) == r  # unique: re-signing gives the same bytes
    with pytest.raises(SignatureError):
        verify_round(BeaconKey.generate(1, 1000).info, r)


def test_beacon_server_and_client() -> None:
    key = BeaconKey.generate(1, int(time.time()) - 3)
    srv = BeaconServer(key).start()
    try:
        h = key.info.hash_hex
        for prefix in ("", f"/{h}"):
            assert ChainInfo.from_json(httpx.get(f"{srv.url}{prefix}/info").content) == key.info
            latest = Round.from_json(httpx.get(f"{srv.url}{prefix}/public/latest").content)
            verify_round(key.info, latest)
        assert httpx.get(f"{srv.url}/{'0' * 64}/info").status_code == 404
        assert httpx.get(f"{srv.url}/public/{latest.round + 50}").status_code == 425
        c = BeaconClient(srv.url, key.info)
        assert c.info() == key.info
        assert c.get_round(2) == key.sign(2)
        assert c.get_round(latest.round + 50) is None
        nxt = key.info.round_at(time.time()) + 1
        assert c.wait_round(nxt, timeout=10) == key.sign(nxt)
        with pytest.raises(BeaconError):  # a beacon serving another chain than the pinned
            BeaconClient(srv.url, KNOWN_CHAINS["quicknet"]).info()
        c.close()
    finally:
        srv.stop()


def test_pick_round_is_in_the_future() -> None:
    q = KNOWN_CHAINS["quicknet"]
    now = 1_800_000_000.5
    r = pick_round(q, now, 6.0)
    assert q.round_time(r) >= now + 6 and q.round_time(r - 1) < now + 6
    assert q.round_at(q.round_time(r)) == r and q.round_at(q.round_time(r) - 0.1) == r - 1


def test_attested_time_witnesses_and_timestamp() -> None:
    log = Signer.generate("potd.test/log")
    ws = [Signer.generate(f"w{i}.test/w", ALG_COSIGNATURE_V1) for i in range(3)]
    plain = sign_checkpoint(Checkpoint(log.name, 5, bytes(32)), log)
    with pytest.raises(VerificationError, match="timestamp"):
        attested_ms(plain, [], 0)
    stamped = sign_checkpoint(Checkpoint(log.name, 5, bytes(32), ("timestamp 1234567",)), log)
    assert attested_ms(stamped, [], 0) == (1234567, "the log's timestamp line")
    text = plain.note.text
    sigs = (*plain.note.signatures, cosign(text, ws[0], 100), cosign(text, ws[1], 50),
            cosign(text, ws[2], 300), cosign(text, ws[1], 70))  # w1 twice: its latest counts
    from ledger.note import Note, SignedCheckpoint

    cp = SignedCheckpoint(plain.checkpoint, Note(text, sigs))
    verifiers = [w.verifier for w in ws]
    assert attested_ms(cp, verifiers, 1)[0] == 71_000  # 1 honest of any 1: the earliest
    assert attested_ms(cp, verifiers, 2)[0] == 101_000  # the 2nd smallest of 70, 100, 300
    assert attested_ms(cp, verifiers, 3)[0] == 301_000
    with pytest.raises(VerificationError):
        attested_ms(cp, verifiers[:1], 2)


def test_challenge_v2_bytes() -> None:
    import hashlib

    run = "ab" * 32
    assert challenge_v2(run, bytes(32)) == hashlib.sha256(
        b"potd-challenge-v2\n" + bytes.fromhex(run) + bytes(32)).digest()


def test_prefix_root_is_rfc6962() -> None:
    from auditor.beacon_check import prefix_root
    from ledger.merkle import CompactRange, leaf_hash

    leaves = [leaf_hash(bytes([i])) for i in range(70)]
    cr = CompactRange()
    for n, lh in enumerate(leaves, 1):
        cr.append(lh)
        assert prefix_root(leaves, n) == cr.root()


class _Opts:
    beacon_chain: ChainInfo | None = None
    beacon_url: str | None = None


class _Audit:
    opts = _Opts()


def test_committed_beacon_field_is_checked() -> None:
    from auditor.beacon_check import BeaconFail, pinned_chain

    a: object = _Audit()
    q = KNOWN_CHAINS["quicknet"]
    ok = {"type": "drand", "chain": q.hash_hex, "round": 5}
    assert pinned_chain(a, ok, "x") == (q, 5)  # type: ignore[arg-type]
    for bad in (None, [], {**ok, "type": "log"}, {**ok, "round": 0}, {**ok, "round": True},
                {**ok, "round": "5"}, {**ok, "chain": 7}):
        with pytest.raises(BeaconFail) as e:
            pinned_chain(a, bad, "x")  # type: ignore[arg-type]
        assert e.value.status == "fail"
    with pytest.raises(BeaconFail) as e:  # unknown chain, nothing pinned: inconclusive
        pinned_chain(a, {**ok, "chain": "ab" * 32}, "x")  # type: ignore[arg-type]
    assert e.value.status == "skip"
    _Opts.beacon_chain = KNOWN_CHAINS["mainnet"]
    try:
        with pytest.raises(BeaconFail) as e:  # the run names another chain than pinned
            pinned_chain(a, ok, "x")  # type: ignore[arg-type]
        assert e.value.status == "fail"
    finally:
        _Opts.beacon_chain = None


def test_hostile_round_and_checkpoint_evidence_fail_cleanly() -> None:
    from auditor.beacon_check import BeaconFail, _attested_before, _round

    class _Client:
        log_key = Signer.generate("potd.test/log").verifier
        witnesses: tuple[object, ...] = ()
        quorum = 0

    a = _Audit()
    a.client = _Client()  # type: ignore[attr-defined]
    info, [r] = _chain("quicknet")
    assert _round(a, info, r.round, r.to_json(), "w") == r  # type: ignore[arg-type]
    for bad in ({}, {"round": "x"}, {"round": r.round, "signature": "zz"}, [1], "s",
                {"round": r.round, "signature": r.signature.hex()[:-2]},
                {**r.to_json(), "round": r.round + 1}):
        with pytest.raises(BeaconFail) as e:
            _round(a, info, r.round, bad, "w")  # type: ignore[arg-type]
        assert e.value.status == "fail"
    cp = sign_checkpoint(Checkpoint(_Client.log_key.name, 5, bytes(32)), Signer.generate(
        "potd.test/log"))
    for text in (None, 7, "garbage", str(cp)):  # missing, not a note, wrong log key
        with pytest.raises(BeaconFail) as e:
            _attested_before(a, text, 3, cp, info, r.round, "run.open")  # type: ignore[arg-type]
        assert e.value.status == "fail"
