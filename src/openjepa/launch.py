"""SLURM through submitit (the optional ``submitit`` extra): ``openjepa submit CONFIG`` queues one
task per GPU; each task exports the torch.distributed variables from SLURM's (so ``train`` joins
the group exactly as under torchrun) and trains. Before a pre-emption or the time limit SLURM
signals the job; submitit then requeues the same ``TrainJob``, which resumes from the run's
``latest.pt``. Work since the last checkpoint is redone: set ``logging.checkpoint_every_steps``
to bound it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import Config, ConfigError, from_dict


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("openjepa submit needs submitit: pip install 'openjepa[submitit]'") from None
    return submitit


class TrainJob:
    """A picklable training call that submitit requeues (it has a ``checkpoint`` method)."""

    def __init__(self, config: dict):
        self.config = config

    def __call__(self) -> str:
        from .pretrain import train

        submitit = _submitit()
        try:
            tasks = submitit.JobEnvironment().num_tasks
        except RuntimeError:  # called outside a submitit job (e.g. directly): one process
            tasks = 1
        if tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return str(train(from_dict(self.config)))

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on pre-emption / timeout: resubmit this very job; the run resumes
        from its latest.pt."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def submit(
    cfg: Config,
    folder: str | Path,
    nodes: int = 1,
    gpus_per_node: int = 1,
    partition: str | None = None,
    timeout_min: int = 4320,
    cpus_per_task: int = 10,
    cluster: str | None = None,
    **slurm,
):
    """Queue ``cfg``'s training; returns the submitit job. ``cluster`` None picks SLURM where it
    exists; 'local' runs it as a local process (for testing the launch path)."""
    if nodes < 1 or gpus_per_node < 1 or timeout_min < 1:
        raise ConfigError(
            f"nodes, gpus_per_node and timeout_min must be at least 1, got {nodes}, {gpus_per_node}, {timeout_min}"
        )
    if cluster is None and shutil.which("sbatch") is None:
        raise ConfigError(
            "openjepa submit queues on SLURM, and this machine has no SLURM (sbatch not found): "
            "use openjepa train here, or --local to test the launch path"
        )
    from .engine import check_run_dir
    from .errors import check_writable_folder

    check_run_dir(Path(cfg.logging.folder))  # refused now, not when the job starts
    check_writable_folder(folder, "the job log folder")
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = {"nodes": nodes, "tasks_per_node": gpus_per_node, "timeout_min": timeout_min, "name": "openjepa"}
    if executor.cluster == "slurm":
        params.update(
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            slurm_signal_delay_s=120,
            **({"slurm_partition": partition} if partition else {}),
            **slurm,
        )
    executor.update_parameters(**params)
    return executor.submit(TrainJob(cfg.to_dict()))
