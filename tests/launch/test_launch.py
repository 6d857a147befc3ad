import torch

from conftest import tiny_config
from openjepa.launch import TrainJob, submit
from openjepa.pretrain import train


def test_submitit_job_trains_and_requeues_into_a_resume(tmp_path):
    """The launch path on a local executor: the job trains to the end; the resubmission submitit
    makes on pre-emption is the same job, and running it resumes (nothing left to do) instead of
    restarting from step 0."""
    cfg = tiny_config(tmp_path / "run")
    job = submit(cfg, tmp_path / "slurm", cluster="local", timeout_min=10)
    run_dir = job.result()
    assert run_dir == str(tmp_path / "run")
    done = torch.load(tmp_path / "run/checkpoints/latest.pt", weights_only=True)
    assert done["step"] == 8  # 2 epochs of 4 steps

    requeued = TrainJob(cfg.to_dict()).checkpoint()
    assert isinstance(requeued.function, TrainJob) and requeued.function.config == cfg.to_dict()
    assert requeued.function() == run_dir
    again = torch.load(tmp_path / "run/checkpoints/latest.pt", weights_only=True)
    assert again["step"] == 8 and all(torch.equal(v, done["encoder"][k]) for k, v in again["encoder"].items())


def test_submitted_run_equals_a_direct_run(tmp_path):
    submit(tiny_config(tmp_path / "a"), tmp_path / "slurm", cluster="local", timeout_min=10).result()
    train(tiny_config(tmp_path / "b"))
    a = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True)["target_encoder"]
    b = torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True)["target_encoder"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
