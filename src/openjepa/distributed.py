"""torchrun / DDP set-up: a few guarded lines, not a framework.

``torchrun --nproc_per_node N -m openjepa.cli train CONFIG`` (or ``openjepa`` under torchrun)
sets RANK / WORLD_SIZE / LOCAL_RANK; we join the process group (NCCL on GPU, gloo on CPU).
``data.batch_size`` is per process: the global batch is batch_size x world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down
    host_group: object = None  # a gloo group for host-side flags (None: the default group is gloo already)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over processes (in place)."""
        if self.size > 1:
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if ``flag`` is true on one of them. Under NCCL the flag travels
        over a gloo group on the host, so asking (every step, for a stop signal) never waits for
        the GPU's queue of work to drain."""
        if self.size == 1:
            return flag
        on_host = self.host_group is not None or device.type == "cpu"
        t = torch.tensor(int(flag), device="cpu" if on_host else device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return bool(t)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> World:
    """Join the process group torchrun / submitit describe (one process: nothing to join).
    ``device`` is ``meta.device``: on CUDA ("auto" with a GPU visible, "cuda") each process takes
    GPU ``LOCAL_RANK`` and NCCL; on "cpu" gloo, even where GPUs are visible."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda" if device != "auto" else torch.cuda.is_available()
    owns = not dist.is_initialized()
    if owns:
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    host_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return World(rank, size, local_rank, owns, host_group)


def shard_ijepa(model) -> tuple[int, int]:
    """FSDP (PyTorch's ``fully_shard``) over every process: each transformer block, then the whole
    network, for the context encoder, the predictor and the target encoder alike. The target
    encoder is a copy of the context encoder, so sharding it the same way puts each process's
    shard of a target parameter beside its shard of the online one: the EMA update is then an
    element-wise lerp of local shards, with no communication (``IJEPA.update_target`` unchanged).
    Parameters are resharded after every forward, so ``parameters()`` always yields the shards.
    Returns (parameter elements this process holds, parameter elements in all)."""
    from torch.distributed.fsdp import fully_shard

    for name in ("encoder", "target_encoder", "predictor"):
        module = getattr(model, name)
        for block in getattr(module, "blocks", None) or module.predictor_blocks:
            fully_shard(block, reshard_after_forward=True)
        fully_shard(module, reshard_after_forward=True)
    for (name, online), target in zip(model.encoder.named_parameters(), model.target_encoder.parameters()):
        if online.placements != target.placements or online.to_local().shape != target.to_local().shape:
            raise RuntimeError(f"FSDP sharded the target encoder's {name} unlike the encoder's")
    params = list(model.parameters())
    return sum(p.to_local().numel() for p in params), sum(p.numel() for p in params)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _optimizer_names(model, optimizer) -> list[str]:
    """The parameter names, in the optimizer's order (the order of its integer state keys)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_full_state(model, optimizer) -> dict:
    """Collective (every process calls it): the unsharded state of a ``shard_ijepa`` model and its
    optimizer, on the CPU of process 0 ({} elsewhere), in the layout ``state_dict()`` gives an
    unsharded model and optimizer, so one checkpoint format serves 1 process, DDP and FSDP."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _full_options()
    state = {
        key: get_model_state_dict(getattr(model, key), options=opts)
        for key in ("encoder", "predictor", "target_encoder")
    }
    opt = get_optimizer_state_dict(model, optimizer, options=opts)
    if dist.get_rank() != 0:
        return {}
    index = {name: i for i, name in enumerate(_optimizer_names(model, optimizer))}
    state["opt"] = {
        "state": {index[name]: value for name, value in opt["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in opt["param_groups"]],
    }
    return state


def load_full_state(model, optimizer, state: dict) -> None:
    """Every process: shard a full checkpoint state (as ``gather_full_state`` writes it) into a
    ``shard_ijepa`` model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    for key in ("encoder", "predictor", "target_encoder"):
        set_model_state_dict(getattr(model, key), state[key], options=opts)
    names = _optimizer_names(model, optimizer)
    opt = state["opt"]
    set_optimizer_state_dict(
        model,
        optimizer,
        options=opts,
        optim_state_dict={
            "state": {names[i]: value for i, value in opt["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in opt["param_groups"]],
        },
    )
