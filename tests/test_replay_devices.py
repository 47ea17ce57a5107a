"""Where the auditor's replay ranks train (auditor.replay_dp.replay_device: a pure function
of the audit's --device, the rank, the world and the CUDA devices visible, so tested here
without a GPU), what a Ray task asks for (auditor.replay_ray.task_gpus), and, on a
machine with 2 GPUs and Ray, an exact Ray audit of a 2-rank NCCL run with --device cuda:1
(skipped here: no GPU)."""

from __future__ import annotations

import pytest
import torch
from e2e import Env

from auditor.replay_dp import replay_device
from auditor.replay_ray import task_gpus
from ledger.errors import UsageError

CPU = torch.device("cpu")


def cuda(i: int) -> torch.device:
    return torch.device("cuda", i)


def test_cpu_replays_stay_on_the_cpu() -> None:
    for assigned in (False, True):
        assert [replay_device("cpu", r, 3, None, assigned) for r in range(3)] == [CPU] * 3
        assert replay_device(CPU, 1, 2, 0, assigned) == CPU  # no GPU needed


def test_local_ranks_start_at_the_index_given() -> None:
    """Without Ray: rank r on cuda:i+r, one GPU each, as the trainer's local ranks."""
    assert [replay_device("cuda:1", r, 2, 4) for r in range(2)] == [cuda(1), cuda(2)]
    assert [replay_device("cuda:0", r, 2, 2) for r in range(2)] == [cuda(0), cuda(1)]
    assert [replay_device("cuda", r, 3, 3) for r in range(3)] == [cuda(0), cuda(1), cuda(2)]
    assert replay_device("cuda:2", 0, 1, 3) == cuda(2)  # a one-process replay: the index
    with pytest.raises(UsageError, match=r"a 2-process run on cuda:1 needs cuda:1\.\.cuda:2, "
                                         "one GPU per rank; this machine has 2 CUDA "
                                         "devices") as e:
        replay_device("cuda:1", 1, 2, 2)
    assert "--device cuda:0" in (e.value.hint or "")  # 2 GPUs are enough from cuda:0
    with pytest.raises(UsageError, match=r"this machine has 1 CUDA device \(hint") as e:
        replay_device("cuda:0", 1, 2, 1)
    assert "--device cuda:0" not in (e.value.hint or "")
    assert "--replay-mode tolerance" in (e.value.hint or "")


def test_ray_task_ranks_use_the_gpus_ray_assigned() -> None:
    """In a Ray task that asked for N GPUs, the visible devices are the N assigned ones,
    cuda:0..N-1 whatever index --device names (CUDA_VISIBLE_DEVICES remapping)."""
    for base in ("cuda", "cuda:0", "cuda:1", "cuda:7"):
        assert [replay_device(base, r, 2, 2, assigned=True) for r in range(2)] == [
            cuda(0), cuda(1)]
        assert replay_device(base, 0, 1, 1, assigned=True) == cuda(0)
    # more visible than asked for (a cluster whose resources undercount its GPUs): still
    # one distinct GPU per rank, from cuda:0
    assert [replay_device("cuda:3", r, 2, 8, assigned=True) for r in range(2)] == [
        cuda(0), cuda(1)]
    with pytest.raises(UsageError, match="a Ray task asked for 2 GPUs to replay 2 ranks, "
                                         "but sees 1 CUDA device") as e:
        replay_device("cuda:1", 1, 2, 1, assigned=True)
    assert "--num-gpus" in (e.value.hint or "")
    with pytest.raises(UsageError, match="sees 0 CUDA devices"):
        replay_device("cuda", 0, 1, 0, assigned=True)


def test_ray_tasks_ask_one_gpu_per_process() -> None:
    assert task_gpus("exact-dp", 2, gpu=True) == 2
    assert task_gpus("exact-dp", 4, gpu=True) == 4
    assert task_gpus("split", 2, gpu=True) == 1  # tolerance mode: one process
    assert task_gpus("single", 1, gpu=True) == 1
    for kind in ("exact-dp", "split", "single"):
        assert task_gpus(kind, 2, gpu=False) == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="no CUDA device" if not
                    torch.cuda.is_available() else "fewer than 2 CUDA devices")
@pytest.mark.slow
def test_ray_exact_replay_of_a_nccl_run_on_cuda_1(env: Env, ray_local: None) -> None:
    """A 2-rank NCCL run audited exactly on Ray with --device cuda:1: the task asks for
    2 GPUs and its ranks train on the two Ray assigned (locally, cuda:1 and cuda:2 would
    need a third GPU)."""
    from test_distributed_resume import _train_cli

    run, ev = _train_cli(env, "nccl-ray", "--device", "cuda:0")
    rep = env.audit(run, ev, samples=2, device="cuda:1", ray="auto", replay_mode="exact")
    assert rep["replay"]["mode"] == "exact", rep["replay"]["mode_reason"]
    assert rep["verdict"] == "pass", rep["replay"]
