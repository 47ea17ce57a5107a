"""C2SP signed-note, tlog-checkpoint and tlog-cosignature/v1, in Go's note key formats.

Keys (Go ``golang.org/x/mod/sumdb/note``):
  verifier  ``<name>+<hex8 key ID>+<base64(alg || pubkey32)>``
  signer    ``PRIVATE+KEY+<name>+<hex8 key ID>+<base64(alg || seed32)>``
  key ID    ``SHA-256(name || 0x0A || alg || pubkey32)[:4]`` (big-endian uint32)
  alg 0x01 = Ed25519 note signature, 0x04 = tlog-cosignature/v1 (timestamped Ed25519),
  0x06 = tlog-cosignature ML-DSA-44 (1312-byte public key; the private key is the
  32-byte FIPS 204 seed, in the same ``PRIVATE+KEY+...`` form: potd's choice).

A cosigner's Ed25519 key may be given in either form, 0x01 or 0x04 (transparency-dev's
witness tools write 0x01 keys): :func:`as_cosigner` reads it as the cosignature/v1 key
with the same public key (its key ID computed with 0x04), as the spec asks.

A note is UTF-8 text ending in a newline (it may hold empty lines), a blank line, then
signature lines ``— <name> <base64(key ID || signature)>``; the text ends at the note's
last empty line. Opening a note: unknown signatures are
ignored; a known key whose signature is bad rejects the note; more than 100
signatures reject it; at least one trusted signature must verify.

Trusts: nothing but the verifier keys passed in. Private key material never appears in
a ``repr`` or an error message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from . import mldsa
from .errors import MalformedError, SignatureError
from .merkle import HASH_SIZE

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
ALG_MLDSA44 = 0x06
_KEY_SIZES = {ALG_ED25519: 32, ALG_COSIGNATURE_V1: 32, ALG_MLDSA44: mldsa.PUBLIC_KEY_SIZE}
MAX_SIGNATURES = 100
MAX_TREE_SIZE = 2**64 - 1  # tree sizes are uint64 everywhere (Go ParseUint(s, 10, 64))
DASH = "\u2014 "


def b64decode(s: str | bytes, what: str = "base64 value") -> bytes:
    """Strict base64 std decoding (padding required) -> MalformedError on any fault."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedError(f"{what} is not valid base64: {e}",
                             hint="use standard base64 with '=' padding") from None
    if len(s) != len(base64.b64encode(raw)):  # CPython accepts "YWJj=" / "YWJj=="; Go does not
        raise MalformedError(f"{what} is not valid base64: excess padding",
                             hint="use standard base64 with '=' padding")
    return raw


def b64encode(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in a str
        return False
    return True


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and all(
        ord(c) >= 0x20 for c in name) and _encodable(name)


def key_id(name: str, alg: int, pubkey: bytes) -> int:
    """``SHA-256(name || '\\n' || alg || pubkey)[:4]`` as a big-endian integer."""
    h = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + pubkey).digest()
    return int.from_bytes(h[:4], "big")


@dataclass(frozen=True)
class Verifier:
    """A public key with its note name: verifies signatures made under (name, key ID)."""

    name: str
    key_id: int
    alg: int
    public_key: bytes

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise MalformedError(f"invalid key name {self.name!r}",
                                 hint="a key name is non-empty, with no '+', spaces or controls")
        if len(self.public_key) != _KEY_SIZES.get(self.alg, -1):
            raise MalformedError(f"unsupported verifier key for {self.name!r} (alg {self.alg}, "
                                 f"{len(self.public_key)} key bytes)",
                                 hint="potd supports Ed25519 (0x01), cosignature/v1 (0x04) "
                                      "and ML-DSA-44 cosignature (0x06) keys")
        if key_id(self.name, self.alg, self.public_key) != self.key_id:
            raise MalformedError(f"verifier key for {self.name!r}: key ID {self.key_id:08x} does "
                                 "not match the key", hint="the key string was altered; re-copy it")

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Parse ``name+hex8+base64``; split on the first two '+' only (base64 may hold '+')."""
        if not isinstance(vkey, str):
            raise MalformedError("verifier key must be a string")
        vkey = vkey.strip()
        # Until the key has a verifier's shape, nothing of it is echoed: it may be a
        # (damaged) private key passed by mistake.
        if vkey.startswith("PRIVATE+"):
            raise MalformedError("this is a private key, not a verifier key (contents not "
                                 "shown)", hint="pass the public key (the .pub file), and keep "
                                                "the private key out of command lines")
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise MalformedError(f"malformed verifier key ({len(vkey)} characters, "
                                 f"{vkey.count('+')} '+'; contents not shown)",
                                 hint="expected <name>+<8 hex digits>+<base64 key>")
        name, hex8, b64 = parts
        if not re.fullmatch(r"[0-9a-f]{8}", hex8):
            raise MalformedError("malformed verifier key: the field after the name is not an "
                                 "8-hex-digit key ID (contents not shown)",
                                 hint="expected <name>+<8 hex digits>+<base64 key>; re-copy "
                                      "the key string exactly")
        raw = b64decode(b64, f"verifier key for {name!r}")
        want = 1 + _KEY_SIZES.get(raw[0] if raw else 0, 32)
        if len(raw) != want:
            raise MalformedError(f"verifier key for {name!r} has {len(raw)} key bytes, expected "
                                 f"{want} (alg {raw[0] if raw else 0:#04x})",
                                 hint="re-copy the key string exactly")
        return cls(name, int(hex8, 16), raw[0], raw[1:])

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{b64encode(bytes([self.alg]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        if self.alg == ALG_MLDSA44:
            return mldsa.verify(self.public_key, message, signature)
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
            return True
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False


@dataclass(frozen=True)
class Signer:
    """A private key (Ed25519, or ML-DSA-44 for alg 0x06) with its note name. ``repr``
    never shows the seed."""

    name: str
    key_id: int
    alg: int
    seed: bytes = field(repr=False)
    _key: nacl.signing.SigningKey | mldsa.PrivateKey = field(init=False, repr=False,
                                                              compare=False)

    def __post_init__(self) -> None:
        if (not isinstance(self.seed, bytes) or len(self.seed) != 32
                or self.alg not in _KEY_SIZES):
            raise MalformedError(f"unsupported private key for {self.name!r}")
        # derived once: deriving the key pair costs as much as a signature
        object.__setattr__(self, "_key", mldsa.PrivateKey(self.seed) if self.alg == ALG_MLDSA44
                           else nacl.signing.SigningKey(self.seed))
        if not _valid_name(self.name):
            raise MalformedError(f"invalid key name {self.name!r}",
                                 hint="a key name is non-empty, with no '+', spaces or controls")
        if key_id(self.name, self.alg, self.public_key) != self.key_id:
            raise MalformedError(f"private key for {self.name!r}: key ID does not match the key",
                                 hint="the key file was altered or truncated")

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> Signer:
        seed = bytes(nacl.signing.SigningKey.generate())
        pub = (mldsa.PrivateKey(seed).public_key if alg == ALG_MLDSA44
               else bytes(nacl.signing.SigningKey(seed).verify_key))
        if not _valid_name(name):
            raise MalformedError(f"invalid key name {name!r}",
                                 hint="a key name is non-empty, with no '+', spaces or controls")
        return cls(name, key_id(name, alg, pub), alg, seed)

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+hex8+base64`` (split on the first four '+')."""
        if not isinstance(skey, str):
            raise MalformedError("private key must be a string")
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise MalformedError("malformed private key (contents not shown)",
                                 hint="expected PRIVATE+KEY+<name>+<8 hex>+<base64>, as written "
                                      "by `potd ledger keygen` or Go's note.GenerateKey")
        name, hex8, b64 = parts[2], parts[3], parts[4]
        if not re.fullmatch(r"[0-9a-f]{8}", hex8):
            # fields may be shifted, so ``name`` may be a piece of the seed: don't show it
            raise MalformedError("malformed private key: no 8-hex-digit key ID after the name "
                                 "(contents not shown)",
                                 hint="expected PRIVATE+KEY+<name>+<8 hex>+<base64>")
        try:
            raw = b64decode(b64)
        except MalformedError:
            raise MalformedError(f"private key for {name!r} is not valid base64 (contents not "
                                 "shown)") from None
        if len(raw) != 33:
            raise MalformedError(f"private key for {name!r} has the wrong length")
        return cls(name, int(hex8, 16), raw[0], raw[1:])

    @property
    def public_key(self) -> bytes:
        if isinstance(self._key, mldsa.PrivateKey):
            return self._key.public_key
        return bytes(self._key.verify_key)

    @functools.cached_property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_id, self.alg, self.public_key)

    def private_string(self) -> str:
        key = b64encode(bytes([self.alg]) + self.seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{key}"

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, mldsa.PrivateKey):
            return self._key.sign(message)
        return bytes(self._key.sign(message).signature)

    def __str__(self) -> str:
        return f"Signer({self.name}+{self.key_id:08x})"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: int
    signature: bytes  # without the 4-byte key ID

    def line(self) -> str:
        return f"{DASH}{self.name} {b64encode(self.key_id.to_bytes(4, 'big') + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A note's text (ending in newline) and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...] = ()

    def __post_init__(self) -> None:
        _check_text(self.text)

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8")


def _check_text(text: str) -> None:
    # empty lines are allowed (signed-note: the text ends at the note's last empty line)
    if not text.endswith("\n"):
        raise MalformedError("note text must end with a newline")
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise MalformedError(f"note text contains control character {ord(c):#04x}")


def sign_note(text: str, *signers: Signer, existing: Sequence[NoteSignature] = ()) -> Note:
    """Sign ``text`` with each signer (Ed25519 notes); keep ``existing`` signatures after."""
    _check_text(text)
    msg = text.encode("utf-8")
    sigs = [NoteSignature(s.name, s.key_id, s.sign(msg)) for s in signers]
    ids = {(s.name, s.key_id) for s in sigs}
    sigs += [s for s in existing if (s.name, s.key_id) not in ids]
    return Note(text, tuple(sigs))


def parse_note(data: bytes | str) -> Note:
    """Split a signed note into text and signatures without verifying anything."""
    if isinstance(data, bytes):
        try:
            s = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError("signed note is not valid UTF-8") from None
    else:
        s = data
        if not _encodable(s):
            raise MalformedError("signed note is not valid UTF-8 (lone surrogate)")
    for c in s:
        if ord(c) < 0x20 and c != "\n":
            raise MalformedError(f"signed note contains control character {ord(c):#04x}")
    split = s.rfind("\n\n")
    if split < 0:
        raise MalformedError("signed note has no blank line before its signatures",
                             hint="a note is text, a blank line, then '— name sig' lines")
    text, rest = s[: split + 1], s[split + 2:]
    if not rest.endswith("\n"):
        raise MalformedError("signed note must end with a newline after its last signature")
    lines = rest[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(f"signed note has {len(lines)} signatures; at most "
                             f"{MAX_SIGNATURES} are accepted")
    sigs = []
    for line in lines:
        if not line.startswith(DASH):
            raise MalformedError(f"malformed signature line {line[:60]!r}",
                                 hint="signature lines start with an em dash (U+2014) and a space")
        body = line[len(DASH):]
        name, sp, b64 = body.partition(" ")
        if not sp or not _valid_name(name) or " " in b64:
            raise MalformedError(f"malformed signature line {line[:60]!r}")
        raw = b64decode(b64, f"signature by {name!r}")
        if len(raw) < 5:
            raise MalformedError(f"signature by {name!r} is too short")
        sigs.append(NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    if not sigs:
        raise MalformedError("signed note has no signatures")
    return Note(text, tuple(sigs))


def open_note(data: bytes | str, verifiers: Iterable[Verifier]) -> tuple[Note, list[Verifier]]:
    """Parse and verify a note; return it and the verifiers whose signatures checked.

    Only Ed25519 (0x01) verifiers are considered here; cosignatures are checked by
    :func:`verify_cosignature`. Raises SignatureError if a known key's signature is bad
    or if no known key signed.
    """
    note = parse_note(data)
    known = {(v.name, v.key_id): v for v in verifiers if v.alg == ALG_ED25519}
    msg = note.text.encode("utf-8")
    good: list[Verifier] = []
    for s in note.signatures:
        v = known.get((s.name, s.key_id))
        if v is None:
            continue
        if not v.verify(msg, s.signature):
            raise SignatureError(f"invalid signature by {v.name}+{v.key_id:08x}",
                                 hint="the note was altered after signing, or was forged")
        if v not in good:  # a repeated signature line counts once
            good.append(v)
    if not good:
        names = ", ".join(sorted({f"{s.name}+{s.key_id:08x}" for s in note.signatures}))
        raise SignatureError(f"note is not signed by any trusted key (signed by: {names})",
                             hint="pin the log's verifier key (vkey) for this origin")
    return note, good


# --- checkpoints (C2SP tlog-checkpoint) -------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """The body of a C2SP checkpoint: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (not self.origin or any(ord(c) < 0x20 for c in self.origin)
                or not _encodable(self.origin)):
            raise MalformedError(f"invalid checkpoint origin {self.origin!r}")
        if not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedError(f"invalid checkpoint size {self.size!r}")
        if len(self.root) != HASH_SIZE:
            raise MalformedError(f"checkpoint root must be 32 bytes, got {len(self.root)}")
        for e in self.extensions:
            if not e or any(ord(c) < 0x20 for c in e) or not _encodable(e):
                raise MalformedError(f"invalid checkpoint extension line {e!r}")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), b64encode(self.root), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise MalformedError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedError(f"checkpoint has {len(lines)} lines; needs origin, size and root",
                                 hint="see C2SP tlog-checkpoint")
        origin, size_s, root_s, *ext = lines
        if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size_s):
            raise MalformedError(f"checkpoint size {size_s[:30]!r} is not a decimal number",
                                 hint="the second line is the tree size, without leading zeros")
        root = b64decode(root_s, "checkpoint root hash")
        if len(root) != HASH_SIZE:
            raise MalformedError(f"checkpoint root hash has {len(root)} bytes, expected 32")
        if b64encode(root) != root_s:  # one text per tree: no second spelling of the root
            raise MalformedError("checkpoint root hash is not canonical base64 (bits set "
                                 "before the '=' padding)",
                                 hint="encode the 32 bytes with standard base64")
        return cls(origin, int(size_s), root, tuple(ext))

    @property
    def timestamp_ms(self) -> int | None:
        for e in self.extensions:
            if e.startswith("timestamp ") and re.fullmatch(r"[0-9]{1,20}", e[10:]):
                return int(e[10:])
        return None


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with its full signed note (log signature and any cosignatures)."""

    checkpoint: Checkpoint
    note: Note

    def to_bytes(self) -> bytes:
        return self.note.to_bytes()

    def __str__(self) -> str:
        return str(self.note)

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> SignedCheckpoint:
    return SignedCheckpoint(cp, sign_note(cp.to_text(), signer))


def open_checkpoint(data: bytes | str, log_key: Verifier, *,
                    origin: str | None = None) -> SignedCheckpoint:
    """Verify a signed checkpoint against the pinned log key and check its origin.

    The origin must be ``origin`` if given, else the key's name. C2SP tlog-checkpoint
    says the key name SHOULD match the origin, not MUST: a log whose key is named
    otherwise is read by passing its origin explicitly (the CLI's ``--origin``, which
    warns). The key is what is trusted; the explicit origin keeps a checkpoint of
    another log signed by the same key from being taken for this log's.
    """
    note, _ = open_note(data, [log_key])
    cp = Checkpoint.from_text(note.text)
    want = log_key.name if origin is None else origin
    if cp.origin != want:
        how = "the log key name" if origin is None else "the pinned origin"
        raise SignatureError(f"checkpoint origin {cp.origin!r} differs from {how} {want!r}",
                             hint="pin the verifier key of this log's origin, or, if the "
                                  "log's key is named otherwise, pass its origin (--origin)")
    return SignedCheckpoint(cp, note)


def origin_warning(origin: str | None, log_key: Verifier) -> str | None:
    """The warning to show when an explicit origin differs from the pinned key's name."""
    if origin is None or origin == log_key.name:
        return None
    return (f"warning: origin {origin!r} differs from the log key's name {log_key.name!r} "
            "(allowed by C2SP tlog-checkpoint, which says SHOULD match); trusting the "
            "pinned key for this origin")
