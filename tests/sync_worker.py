"""Run under torchrun by test_distributed.py: counts the gradient collectives of one optimiser step
of ``accum`` micro-batches (train.accumulate), under DDP or FSDP, and prints the count as JSON."""

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

from conftest import tiny_config
from openjepa.data import MaskCollator
from openjepa.ijepa import build_ijepa
from openjepa.masks import mask_sampler_for
from openjepa.pretrain import accumulate


def main(mode: str, accum: int) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    cfg = tiny_config(tempfile.mkdtemp())
    model = build_ijepa(cfg)
    calls = [0]
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, broadcast_buffers=False)

        def counting_allreduce(state, bucket):
            calls[0] += 1
            future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
            return future.then(lambda f: f.value()[0] / dist.get_world_size())

        step_model.register_comm_hook(None, counting_allreduce)
    else:
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group  # noqa: PLC2701 (what the test counts)

        from openjepa.distributed import shard_ijepa

        shard_ijepa(model)
        step_model = model
        reduce = _fsdp_param_group.foreach_reduce

        def counting_reduce(*args, **kwargs):
            calls[0] += 1
            return reduce(*args, **kwargs)

        _fsdp_param_group.foreach_reduce = counting_reduce
    collator = MaskCollator(mask_sampler_for(cfg), 0, 4, dist.get_rank(), dist.get_world_size())
    micro = [
        {
            "images": torch.randn(4, 3, 16, 16),
            **collator.masks(b, list(range(4 * dist.get_rank(), 4 * dist.get_rank() + 4))),
        }
        for b in range(accum)
    ]
    accumulate(step_model, micro, torch.device("cpu"), torch.autocast("cpu", enabled=False), 1.0 / accum)
    grads = torch.cat(
        [
            p.grad.full_tensor().flatten() if hasattr(p.grad, "full_tensor") else p.grad.flatten()
            for p in model.encoder.parameters()
        ]
    )
    gathered = [torch.zeros_like(grads) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, grads)
    if dist.get_rank() == 0:
        print(json.dumps({"calls": calls[0], "grads_equal": all(torch.equal(g, gathered[0]) for g in gathered)}))
    dist.barrier()  # neither process tears gloo down while the other is still in the gather (it aborted, -6)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    # The result is out and the group destroyed; the interpreter's own teardown of torch's distributed state
    # still aborted now and then (SIGABRT, one run in two on a loaded 2-core machine): leave without it.
    sys.stdout.flush()
    os._exit(0)
