"""Canonical tensor hashing: framing, dtypes (bf16), devices, safetensors agreement."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from safetensors.torch import save

from ledger.errors import MalformedError, UsageError
from prover.hashing import example_hash, hash_safetensors_bytes, hash_tensors


def test_framing_matches_documented_layout() -> None:
    t = torch.tensor([1.0, -2.0], dtype=torch.float32)
    want = hashlib.sha256(
        b"potd-tensors-v1\n" + struct.pack(">H", 1) + b"w" + struct.pack(">B", 3) + b"F32"
        + struct.pack(">B", 1) + struct.pack(">Q", 2) + struct.pack(">Q", 8)
        + struct.pack("<ff", 1.0, -2.0)).hexdigest()
    assert hash_tensors({"w": t}, "sha256") == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                   torch.int64, torch.uint8, torch.bool])
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_every_dtype_agrees_with_safetensors_bytes(dtype: torch.dtype, algorithm: str) -> None:
    g = torch.Generator().manual_seed(0)
    sd = {"a.weight": (torch.randn(3, 5, generator=g) * 4).to(dtype),
          "b": torch.tensor(7).to(dtype), "z": torch.zeros(0, 2).to(dtype)}
    h = hash_tensors(sd, algorithm)
    assert h == hash_safetensors_bytes(save(sd), algorithm)
    assert h == hash_safetensors_bytes(save(sd), algorithm, contiguous_limit=0)  # streamed
    assert len(h) == 64


def test_bf16_hash_sees_every_bit() -> None:
    w = torch.randn(16, 16).to(torch.bfloat16)
    h = hash_tensors({"w": w})
    w2 = w.clone()
    w2.view(torch.int16)[3, 4] ^= 1  # flip the lowest mantissa bit
    assert hash_tensors({"w": w2}) != h
    # the same values as float32 hash differently: the dtype is framed
    assert hash_tensors({"w": w.float()}) != h


def test_layout_and_names_are_framed() -> None:
    a = torch.arange(6, dtype=torch.float32)
    assert hash_tensors({"w": a.reshape(2, 3)}) != hash_tensors({"w": a.reshape(3, 2)})
    assert hash_tensors({"w": a.reshape(2, 3).t()}) == hash_tensors(
        {"w": a.reshape(2, 3).t().contiguous()})
    assert hash_tensors({"ab": a, "c": a}) != hash_tensors({"a": a, "bc": a})
    # key order in the dict does not matter, sorted order is used
    assert hash_tensors({"x": a, "y": a * 2}) == hash_tensors({"y": a * 2, "x": a})


def test_non_contiguous_and_grad_tensors() -> None:
    p = torch.nn.Parameter(torch.randn(4, 4))
    assert hash_tensors({"p": p}) == hash_tensors({"p": p.detach().clone()})
    assert hash_tensors({"p": p[:, ::2]}) == hash_tensors({"p": p[:, ::2].contiguous()})


def test_example_hash_is_sha256_of_framing() -> None:
    x, y = torch.ones(4), torch.tensor(3)
    assert len(example_hash(x, y)) == 32
    assert example_hash(x, y) != example_hash(x, torch.tensor(2))


def test_unknown_algorithm_and_bad_safetensors() -> None:
    with pytest.raises(UsageError):
        hash_tensors({"w": torch.ones(1)}, "md5")
    for junk in (b"", b"\x05\x00", struct.pack("<Q", 99) + b"{}", struct.pack("<Q", 2) + b"[]"):
        with pytest.raises(MalformedError):
            hash_safetensors_bytes(junk)


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
@pytest.mark.parametrize("limit", [0, 1 << 20])  # streamed piecewise / one buffer
def test_state_hasher_equals_hash_tensors_across_in_place_updates(algorithm: str,
                                                                  limit: int) -> None:
    from prover.hashing import StateHasher

    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(8, 8, generator=g), "b": torch.randn(8, generator=g),
          "h": torch.randn(4, 4, generator=g).to(torch.bfloat16),
          "n": torch.tensor(3), "m": torch.tensor([True, False]),
          "t": torch.randn(6, 4, generator=g).t()}  # non-contiguous: never cached
    sh = StateHasher(algorithm, contiguous_limit=limit)
    for i in range(4):
        assert sh.hash(sd) == hash_tensors(sd, algorithm), i
        sd["w"].add_(0.5)  # in place: cached view must see the new bytes
        sd["h"].mul_(1.5)
        sd["n"] += 1
    # replacing a tensor object (same name, new storage/shape) is picked up
    sd["b"] = torch.zeros(3)
    assert sh.hash(sd) == hash_tensors(sd, algorithm)
    del sd["m"]
    assert sh.hash(sd) == hash_tensors(sd, algorithm)


def test_stream_round_trip_and_malformed() -> None:
    from prover.hashing import StateHasher, parse_stream, stream_size, write_stream

    sd = {"a": torch.arange(5, dtype=torch.int32), "bb": torch.ones(2, 3, dtype=torch.float16)}
    parts = StateHasher().parts(sd)
    buf = bytearray(stream_size(parts))
    assert write_stream(parts, memoryview(buf)) == len(buf)
    assert hash_tensors(sd, "sha256") == hashlib.sha256(bytes(buf)).hexdigest()
    got = parse_stream(bytes(buf))
    assert [(n, dt, shape, nb) for n, dt, shape, _, nb in got] == [
        ("a", "I32", [5], 20), ("bb", "F16", [2, 3], 12)]
    off, nb = got[0][3], got[0][4]
    assert bytes(buf[off:off + nb]) == sd["a"].numpy().tobytes()
    with pytest.raises(MalformedError):
        parse_stream(b"not-a-stream")
    with pytest.raises(MalformedError):
        parse_stream(bytes(buf[:-3]))  # last tensor runs past the end
    with pytest.raises(MalformedError):
        parse_stream(bytes(buf[:len(buf) - 12 - 12]))  # cut inside a frame
