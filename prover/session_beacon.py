"""The beacon side of a :class:`~prover.session.TrainingSession` (docs/protocol.md §4.2):
which drand round ``run.open`` commits, the log's own beacon (version 1), and waiting for
a round with a checkpoint that attests ``run.open`` existed before the round was
published. A mixin of :class:`~prover.session.TrainingSession`; attacks override
:meth:`BeaconTiming.choose_round`."""

from __future__ import annotations

import time
from typing import Any

from ledger.beacon_client import BeaconClient
from ledger.client import LogClient, Receipt
from ledger.errors import PotdError, VerificationError
from ledger.note import SignedCheckpoint, Verifier
from ledger.policy import Policy
from prover.beacon import attested_ms, pick_round
from prover.derive import beacon_from_checkpoint


class BeaconTiming:
    """Round choice and beacon evidence (mixin; the session sets the attributes)."""

    client: LogClient
    chain: Any
    beacon: BeaconClient | None
    beacon_lead: float
    time_witnesses: tuple[Verifier, ...]
    time_quorum: int
    time_policy: Policy | None
    _round_open: int | None

    def choose_round(self) -> int:
        """The drand round committed in run.open (then in run.close): the first one
        ``beacon_lead`` seconds ahead (twice that for run.close, which is logged behind
        the last steps' submission). Attacks override this."""
        if self._round_open is None:
            self._round_open = pick_round(self.chain, time.time(), self.beacon_lead)
            return self._round_open
        return pick_round(self.chain, time.time(), 2 * self.beacon_lead)

    def _attested(self, index: int, receipt_cp: SignedCheckpoint, by_ms: int
                  ) -> SignedCheckpoint:
        """A checkpoint covering ``index`` whose attested time (the client's witness
        policy, else the log's timestamp) is known; waits for witnesses until ``by_ms``."""
        cp = receipt_cp
        # a client without state: /checkpoint as served (the newest witnessed one)
        fresh = LogClient(self.client.url, self.client.log_key)
        try:
            while True:
                try:
                    attested_ms(cp, self.time_witnesses, self.time_quorum, self.time_policy)
                    return cp
                except VerificationError:
                    if time.time() * 1000 >= by_ms:
                        raise
                time.sleep(0.1)
                try:
                    latest = fresh.checkpoint()
                except PotdError:
                    continue
                if latest.size > index:
                    cp = latest
        finally:
            fresh.close()

    def _log_beacon(self, receipt: Receipt) -> tuple[bytes, dict[str, Any]]:
        """Version 1 beacon: SHA-256 of the log's signature on the checkpoint ending with
        run.open, and the step-0 evidence (that checkpoint)."""
        if receipt.beacon_checkpoint is None:
            raise PotdError("the log's reply to run.open carries no beacon_checkpoint",
                            hint="this log does not implement the potd write API")
        beacon = beacon_from_checkpoint(receipt.beacon_checkpoint, self.client.log_key,
                                        receipt.index + 1)
        return beacon, {"beacon_checkpoint": receipt.beacon_checkpoint}

    def _drand_beacon(self, receipt: Receipt, round_: int) -> tuple[bytes, dict[str, Any]]:
        """Wait for round ``round_``: its randomness, and the step-0 evidence (the round
        and the checkpoint attesting that run.open existed before its publication)."""
        assert self.beacon is not None
        due = self.chain.round_time(round_) * 1000
        cp = self._attested(receipt.index, receipt.checkpoint, due)
        self._check_attested(cp, due, f"drand round {round_}")
        rnd = self.beacon.wait_round(round_)
        return rnd.randomness, {"beacon_round": rnd.to_json(), "open_checkpoint": str(cp)}

    def _check_attested(self, cp: SignedCheckpoint, due_ms: int, what: str) -> None:
        t, basis = attested_ms(cp, self.time_witnesses, self.time_quorum, self.time_policy)
        if t >= due_ms:
            raise PotdError(f"the log attests the statement at {t} ms ({basis}), not before "
                            f"{what} ({due_ms} ms): the auditor would reject it",
                            hint="raise the beacon lead (--beacon-lead) or fix the clock")
