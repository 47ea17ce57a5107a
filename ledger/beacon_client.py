"""Client of a drand HTTP beacon (a relay, or ``potd beacon serve``).

Everything it returns is verified against the **pinned** chain info (see
:mod:`ledger.drand`): the beacon's transport and the relay are untrusted. Responses are
bounded in size and time.
"""

from __future__ import annotations

import time
from pathlib import Path

from .drand import ChainInfo, Round, known_chain, verify_round
from .errors import MalformedError, PotdError, UsageError
from .peer import Peer

MAX_RESPONSE = 64 * 1024


class BeaconError(PotdError):
    code = "beacon_unavailable"
    hint = "check the beacon URL and that it serves the pinned chain"


def load_chain(spec: str) -> ChainInfo:
    """``spec``: a known chain name (``quicknet``, ``mainnet``), a known chain hash, or a
    file holding drand ``/info`` JSON."""
    info = known_chain(spec)
    if info is not None:
        return info
    p = Path(spec)
    if p.is_file():
        return ChainInfo.from_json(p.read_bytes())
    raise UsageError(f"--beacon-chain {spec[:80]!r} is neither a known chain nor a file",
                     hint="pass the chain's /info JSON as a file (e.g. from `potd beacon info`)")


class BeaconClient:
    def __init__(self, url: str, chain: ChainInfo | None = None, *,
                 timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._peer = Peer(deadline=timeout)  # bounded: MAX_RESPONSE bytes, total deadline
        self.chain = chain

    def close(self) -> None:
        self._peer.close()

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            r = self._peer.get(self.url + path, limit=MAX_RESPONSE)
        except PotdError as e:
            raise BeaconError(f"beacon {self.url}{path}: {e.message}") from None
        return r.status, r.body

    def info(self) -> ChainInfo:
        """The beacon's chain info; must equal the pinned one, if any (then it is pinned)."""
        prefix = f"/{self.chain.hash_hex}" if self.chain else ""
        status, data = self._get(f"{prefix}/info")
        if status != 200:
            raise BeaconError(f"beacon {self.url}: /info answered HTTP {status}")
        info = ChainInfo.from_json(data)
        if self.chain is not None and info != self.chain:
            raise BeaconError(f"beacon {self.url} serves chain {info.hash_hex[:16]}…, not the "
                              f"pinned {self.chain.hash_hex[:16]}…")
        if self.chain is None:
            self.chain = info
        return info

    def get_round(self, r: int) -> Round | None:
        """Round ``r``, verified; ``None`` if it is not published yet."""
        chain = self.chain or self.info()
        status, data = self._get(f"/{chain.hash_hex}/public/{r}")
        if status in (404, 425) and r > chain.round_at(time.time()) - 1:
            return None
        if status != 200:
            raise BeaconError(f"beacon {self.url}: round {r} answered HTTP {status}")
        try:
            rnd = Round.from_json(data)
        except MalformedError as e:
            raise BeaconError(f"beacon {self.url}: round {r}: {e.message}") from None
        verify_round(chain, rnd, r)
        return rnd

    def wait_round(self, r: int, timeout: float = 120.0) -> Round:
        """Block until round ``r`` is published (by the pinned schedule), then fetch it."""
        chain = self.chain or self.info()
        deadline = time.monotonic() + timeout + max(0.0, chain.round_time(r) - time.time())
        while True:
            delay = chain.round_time(r) - time.time()
            if delay > 0:
                time.sleep(min(delay + 0.05, 5.0))
                continue
            got = self.get_round(r)
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise BeaconError(f"beacon {self.url}: round {r} not published within "
                                  f"{timeout:.0f} s of its time")
            time.sleep(0.2)
