"""Subtree consistency proofs (draft-ietf-plants-merkle-tree-certs-03 §4) and the
witness's optional ``sign-subtree`` call (C2SP tlog-witness at HEAD), on a real witness
server with an ML-DSA-44 key."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from test_witness import Server, body, new_log, post

from ledger.errors import ConsistencyError
from ledger.merkle import leaf_hash, node_hash
from ledger.mldsa import cosigned_message
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_MLDSA44,
    Checkpoint,
    NoteSignature,
    Signer,
    parse_note,
    sign_checkpoint,
)
from ledger.subtree import check_subtree, prove_subtree, valid_subtree
from ledger.witness import Witness, WitnessState
from ledger.witness_subtree import sign_subtree


def _mth_fn(leaves: list[bytes]) -> Callable[[int, int], bytes]:
    """MTH(D[lo:hi]) over ``leaves`` (RFC 9162 §2.1.1), memoised."""
    memo: dict[tuple[int, int], bytes] = {}

    def mth(lo: int, hi: int) -> bytes:
        if (lo, hi) not in memo:
            if hi - lo == 1:
                memo[lo, hi] = leaves[lo]
            else:
                k = lo + (1 << ((hi - lo - 1).bit_length() - 1))
                memo[lo, hi] = node_hash(mth(lo, k), mth(k, hi))
        return memo[lo, hi]

    return mth


def test_draft_appendix_vectors() -> None:
    """Appendix C.1 (every valid subtree's hash) and C.3 (every subtree consistency proof,
    trees up to 130 entries ``bytes([i])``) of the MTC draft, as accumulated digests; every
    proof also verifies."""
    mth = _mth_fn([leaf_hash(bytes([i])) for i in range(130)])
    c1, c3 = hashlib.sha256(), hashlib.sha256()
    for n in range(131):
        for end in range(1, n + 1):
            for start in range(end):
                if not valid_subtree(start, end):
                    continue
                if n == 130:
                    c1.update(b"[%d, %d) %s\n" % (start, end, mth(start, end).hex().encode()))
                p = prove_subtree(start, end, n, mth)
                check_subtree(start, end, n, p, mth(start, end), mth(0, n))
                c3.update(b"[%d, %d) %d" % (start, end, n)
                          + b"".join(b" " + h.hex().encode() for h in p) + b"\n")
    assert c1.hexdigest() == "94a95384a8c69acea9b50d035a58285b3a777cb7a724005faa5e1f1e1190007f"
    assert c3.hexdigest() == "c586ebbb73a5621baf2140095d87dde934e3b6503a562a1a5215b8209edd083d"


def test_every_tampering_fails() -> None:
    for n in range(1, 40):
        mth = _mth_fn([leaf_hash(b"%d" % i) for i in range(n)])
        for end in range(1, n + 1):
            for start in range(end):
                if not valid_subtree(start, end):
                    continue
                p, node, root = prove_subtree(start, end, n, mth), mth(start, end), mth(0, n)
                bad = [(p[:i] + [bytes(32)] + p[i + 1:], node, root) for i in range(len(p))]
                bad += [(p, bytes(32), root), (p, node, bytes(32)), (p + [node], node, root)]
                if p:
                    bad.append((p[:-1], node, root))
                for q, nd, rt in bad:
                    with pytest.raises(ConsistencyError):
                        check_subtree(start, end, n, q, nd, rt)
    assert [valid_subtree(*r) for r in ((8, 13), (0, 14), (1, 3), (4, 4), (7, 9))] == [
        True, True, False, False, False]


def _request(start: int, end: int, node: bytes, proof: list[bytes], note: str) -> bytes:
    lines = [f"subtree {start} {end}", *(base64.b64encode(h).decode() for h in [node, *proof])]
    return ("\n".join(lines) + "\n\n" + note).encode()


def test_sign_subtree_on_a_real_mldsa_witness(tmp_path: Path) -> None:
    key = Signer.generate("witness.example/pq", ALG_MLDSA44)
    (tmp_path / "w.key").write_text(key.private_string() + "\n")
    db = tmp_path / "w.db"
    WitnessState(str(db)).close()
    log = new_log(tmp_path, db)
    entries = [b"e%d" % i for i in range(14)]
    log.append(entries)
    mth = _mth_fn([leaf_hash(e) for e in entries])
    cp = log.checkpoint()
    srv = Server(db, tmp_path / "w.key", tmp_path / "err")
    try:
        with httpx.Client(timeout=10) as http:
            r = post(http, srv.url, body(0, [], str(cp)))
            assert r.status_code == 200, r.text
            cosigned = (cp.to_bytes() + r.content).decode()

            def sign(start: int, end: int, node: bytes, proof: list[bytes],
                     note: str = cosigned) -> httpx.Response:
                return http.post(srv.url + "/sign-subtree",
                                 content=_request(start, end, node, proof, note))

            p = prove_subtree(8, 13, 14, mth)
            r = sign(8, 13, mth(8, 13), p)
            assert r.status_code == 200, r.text
            s = parse_note(cosigned.encode() + r.content).signatures[-1]
            assert (s.name, s.key_id) == (key.name, key.verifier.key_id)
            assert s.signature[:8] == bytes(8)  # timestamp zero
            msg = cosigned_message(key.name, 0, cp.origin, 8, 13, mth(8, 13))
            assert key.verifier.verify(msg, s.signature[8:])
            assert not key.verifier.verify(
                cosigned_message(key.name, 0, cp.origin, 8, 12, mth(8, 13)), s.signature[8:])
            # the cheapest attacks, each with the status the spec gives
            log_only = str(cp)  # the log's signature, no cosignature by this witness
            forged = str(cp) + NoteSignature(key.name, key.verifier.key_id,
                                             bytes(8 + 2420)).line()
            other = Signer.generate("potd.example/other")
            for args, status in [
                ((8, 13, bytes(32), p), 422),                       # another subtree hash
                ((8, 13, mth(8, 13), [*p[:-1], bytes(32)]), 422),   # a bad proof hash
                ((8, 13, mth(8, 13), p[:-1]), 422),                 # a short proof
                ((1, 3, mth(1, 3), []), 400),                       # not a valid subtree
                ((0, 16, mth(0, 14), []), 400),                     # end beyond the size
                ((8, 13, mth(8, 13), p, log_only), 403),
                ((8, 13, mth(8, 13), p, forged), 403),
            ]:
                assert sign(*args).status_code == status, (args[:2], status)
            stranger = str(sign_checkpoint(Checkpoint(other.name, 14, cp.root), other))
            assert sign(8, 13, mth(8, 13), p, stranger).status_code == 404
            for bad in (b"subtree 8\n\n" + cp.to_bytes(), b"no empty line",
                        _request(8, 13, mth(8, 13), [bytes(32)] * 64, cosigned)):
                assert http.post(srv.url + "/sign-subtree", content=bad).status_code == 400
    finally:
        srv.stop()


def test_ed25519_witness_cannot_sign_subtrees(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    state = WitnessState(str(db))
    log = new_log(tmp_path, db)
    log.append([b"a", b"b"])
    w = Witness(state, Signer.generate("witness.example/ed", ALG_COSIGNATURE_V1))
    cp = log.checkpoint()
    cosigned = str(cp) + w.add_checkpoint(body(0, [], str(cp))).decode()
    with pytest.raises(Exception) as e:
        sign_subtree(w, _request(0, 2, cp.root, [], cosigned))
    assert getattr(e.value, "status", None) == 404 and "ML-DSA-44" in str(e.value)
    state.close()
