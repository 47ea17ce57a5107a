"""The evidence store's writer side: atomic, content-addressed, durable in groups."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save

from prover.evidence import EvidenceSource, EvidenceStore
from prover.hashing import hash_tensors


def _obj(seed: int) -> tuple[str, bytes]:
    data = save({"w": torch.full((4,), float(seed))})
    return hashlib.sha256(data).hexdigest() + ".safetensors", data


def _hash(seed: int) -> str:
    return hash_tensors({"w": torch.full((4,), float(seed))})


def test_deferred_objects_appear_only_after_sync(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    objs = [_obj(i) for i in range(3)]
    for name, data in objs + objs[:1]:  # a repeat within the group is written once
        store.put_bytes_deferred(name, data)
    objects = tmp_path / "objects"
    assert not any((objects / n).exists() for n, _ in objs)  # not visible before sync
    assert len(list(objects.glob(".tmp-*"))) == 3
    store.sync()
    assert list(objects.glob(".tmp-*")) == []
    src = EvidenceSource(str(tmp_path))
    for i, (name, data) in enumerate(objs):
        assert (objects / name).read_bytes() == data
        assert src.load(name, _hash(i), "blake3")["w"][0] == i  # name and hash check out
    store.sync()  # nothing pending: a no-op
    store.put_bytes_deferred(*objs[0])  # already stored: not rewritten
    assert list(objects.glob(".tmp-*")) == []


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    t = {"a": torch.arange(3.0), "b": torch.ones(2, dtype=torch.bfloat16)}
    name = store.put(t)
    assert name == store.put(t)
    data = (tmp_path / "objects" / name).read_bytes()
    assert name == hashlib.sha256(data).hexdigest() + ".safetensors"
