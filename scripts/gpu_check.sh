#!/usr/bin/env bash
# The prover and auditor benchmarks on a GPU, with tiny-gpt at GPT-2-small shape
# (12 layers, 12 heads, 768-wide embeddings, 1024-token windows: ~124M parameters).
# Prints the prover's overhead (prover vs plain training, same run) and the replay ratio
# (auditor replay vs original training, same run); both scripts print ratios against a
# baseline measured in the same run. With 2 or more GPUs it then runs a 2-rank NCCL
# data-parallel smoke run (scripts/ddp_smoke.py: train with --nproc 2 on cuda:0 and
# cuda:1, audit exactly with 2 NCCL ranks) and fails if that audit does not pass.
#
#   scripts/gpu_check.sh            # on a machine with CUDA: the full check
#   scripts/gpu_check.sh --smoke    # a CPU smoke run (tiny shape, few steps), as in CI
#
# Without a CUDA device it says so and runs the smoke version on the CPU, then exits 0.
# Environment: PYTHON (default .venv/bin/python), GPU_DEVICE (default cuda),
# GPU_STEPS (prover benchmark steps, default 50). The full check writes evidence (weights
# and AdamW state, ~1.5 GB per checkpoint) to a temporary directory: keep ~10 GB in TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${GPU_DEVICE:-cuda}
STEPS=${GPU_STEPS:-50}

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
if [ "$smoke" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is false): running the CPU smoke version instead"
    smoke=1
fi

if [ "$smoke" = 1 ]; then
    shape=(n_layer=1 n_head=2 n_embd=32 block=32 windows=64 batch_size=8 k=4)
    echo "== prover overhead (CPU smoke: tiny-gpt ${shape[*]})"
    "$PY" scripts/bench_prover.py --recipes tiny-gpt --device cpu --set "${shape[@]}" \
        --steps 4 --chunks 2
    echo "== replay ratio (CPU smoke)"
    "$PY" scripts/bench_auditor.py --entries 0 --recipe tiny-gpt --epochs 1 --samples 1 \
        --repeats 1 --device cpu --set "${shape[@]}"
    echo "== 2-rank NCCL smoke: skipped (no CUDA device; scripts/ddp_smoke.py --device cpu is the gloo version)"
    echo "gpu_check: smoke run done (no GPU numbers measured)"
    exit 0
fi

shape=(n_layer=12 n_head=12 n_embd=768 block=1024 windows=256 batch_size=8 micro_batches=2 k=10)
"$PY" -c "import torch; d = torch.device('$DEVICE'); print('gpu_check:', torch.cuda.get_device_name(d), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
echo "== prover overhead on $DEVICE (tiny-gpt at GPT-2-small shape: ${shape[*]})"
"$PY" scripts/bench_prover.py --recipes tiny-gpt --device "$DEVICE" --set "${shape[@]}" \
    --steps "$STEPS" --chunks 2
echo "== replay ratio on $DEVICE (same shape)"
"$PY" scripts/bench_auditor.py --entries 0 --recipe tiny-gpt --epochs 1 --samples 2 \
    --repeats 2 --device "$DEVICE" --set "${shape[@]}"
ngpu=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$ngpu" -ge 2 ]; then
    echo "== 2-rank NCCL smoke (data-parallel training on cuda:0 and cuda:1, exact audit on CUDA)"
    "$PY" scripts/ddp_smoke.py --device cuda:0 --nproc 2
else
    echo "== 2-rank NCCL smoke: skipped ($ngpu CUDA device: it needs 2)"
fi
