"""The project's one exception hierarchy.

Every error carries a ``hint``: one sentence a person can act on. Untrusted bytes never
escape a parser as a raw ``ValueError``/``KeyError``/``binascii.Error``; they become a
:class:`MalformedError`. ``verify_*`` functions raise a :class:`VerificationError`
(with the evidence attached) and otherwise return ``None``.
"""

from __future__ import annotations

from typing import Any


class PotdError(Exception):
    """Base class of every error potd raises on purpose."""

    code = "error"
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class MalformedError(PotdError):
    """Input bytes that do not parse: a note, key, proof, checkpoint, tile path, entry."""

    code = "malformed"
    hint = "the input does not follow the documented format; check where it came from"


class UsageError(PotdError):
    """A caller asked for something impossible (an index past the tree, a bad size)."""

    code = "bad_request"
    hint = "check the arguments against the current tree size"


class VerificationError(PotdError):
    """Something well-formed failed a cryptographic or consistency check."""

    code = "verification_failed"
    hint = "do not trust this data; keep the evidence and report it"

    def __init__(self, message: str, *, hint: str | None = None, **evidence: Any) -> None:
        super().__init__(message, hint=hint)
        self.evidence = evidence


class SignatureError(VerificationError):
    """A signature did not verify, or no trusted key signed."""

    code = "bad_signature"
    hint = "check that you pinned the right verifier key for this origin"


class InclusionError(VerificationError):
    """An inclusion (audit path) proof did not verify."""

    code = "bad_inclusion_proof"


class ConsistencyError(VerificationError):
    """Two tree states are not provably consistent: a fork, a rollback or a bad proof.

    ``evidence`` holds the two checkpoints (or roots and sizes) and the proof.
    """

    code = "inconsistent"
    hint = ("the log showed two histories that cannot both be true; keep both "
            "checkpoints and the proof as evidence of misbehaviour")


class StorageError(PotdError):
    """The storage backend failed or holds data that contradicts itself."""

    code = "storage"
    hint = "check the database file, its permissions and free disk space"


class PushbackError(PotdError):
    """The log is overloaded; try again after ``retry_after`` seconds."""

    code = "pushback"
    hint = "retry later; the log is shedding load"

    def __init__(self, message: str, *, retry_after: float = 1.0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class LimitError(PotdError):
    """A peer's answer broke a bound this side sets: more bytes than the protocol allows
    for the object, no complete answer before the request's deadline, or a claim (a tree
    size) beyond what this side is configured to verify."""

    code = "limit"
    hint = ("the peer sent more than the protocol allows or claims more than this side "
            "verifies; do not trust it (raise the limit only for a peer you expect it of)")


class ResponseTooLarge(LimitError):
    """A response body (counted decoded) exceeded the cap for what was asked."""

    code = "too_large"
    hint = ("the peer sent more bytes than the protocol allows for this object; it is "
            "misbehaving or not the server you meant")


class DeadlineExceeded(LimitError):
    """A request got no complete answer within its total deadline."""

    code = "timeout"
    hint = "the peer is too slow or stalling on purpose; retry later or use another mirror"


class PeerUnreachable(PotdError):
    """A connection to a peer failed or broke before a complete HTTP answer."""

    code = "unreachable"
    hint = "check the URL and that the peer is running"
