"""Where a decoder lives in a run (``RUN/decoder/``), what its checkpoint holds, and how it is
read back: for a resumed fit, or the fitted network (its weight average) for sampling."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..checkpoint import DECODER_FORMAT, CheckpointError
from ..engine import Checkpointer, is_run_dir, warn_changed
from ..errors import BadInput
from ..models.decoder import Denoiser
from .settings import NOT_MATHEMATICS, DecoderSettings

log = logging.getLogger("openjepa")
FOLDER = "decoder"


def run_checkpoint(run_dir: str | Path) -> Path:
    """RUN/checkpoints/latest.pt of a pretraining run; BadInput naming ``run_dir`` when it is not one."""
    run_dir = Path(run_dir)
    latest = run_dir / "checkpoints" / "latest.pt"
    if not run_dir.is_dir():
        raise BadInput(f"run directory {run_dir} not found")
    if not is_run_dir(run_dir) or not latest.is_file():
        raise BadInput(f"{run_dir} is not a pretraining run directory with a checkpoint (no {latest})")
    return latest


def checkpointer(run_dir: str | Path) -> Checkpointer:
    return Checkpointer(Path(run_dir) / FOLDER / "checkpoints")


def fingerprint(module: torch.nn.Module) -> str:
    """A digest of a network's weights: which target encoder a decoder was fitted on."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_state(checkpoints: Checkpointer) -> dict | None:
    """The decoder's latest checkpoint, None when there is none; CheckpointError when the file is of another kind."""
    state = checkpoints.load_latest()
    if state is not None and state.get("format") != DECODER_FORMAT:
        raise CheckpointError(f"{checkpoints.latest} is not a decoder checkpoint; move it away to fit the decoder")
    return state


def save_state(checkpoints, denoiser, ema, optimizer, step: int, settings, source: dict, elapsed: float) -> None:
    checkpoints.save(
        {
            "format": DECODER_FORMAT,
            "version": 1,
            "denoiser": denoiser.config(),
            "model": denoiser.state_dict(),
            "ema": ema.state_dict(),
            "opt": optimizer.state_dict(),
            "step": step,
            "settings": settings.to_dict(),
            "source": source,
            "elapsed_s": elapsed,
        }
    )


def restore_state(state: dict, latest: Path, denoiser, ema, optimizer, settings, source: dict) -> tuple[int, float]:
    """Weights, weight average and optimiser back from ``state``; (the step, earlier sessions' time)."""
    what = "the run's target encoder"
    warn_changed(
        {**state["settings"], what: state["source"]["target_encoder"]},
        {**settings.to_dict(), what: source["target_encoder"]},
        NOT_MATHEMATICS,
    )
    try:
        denoiser.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["opt"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{latest} does not match this decoder ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"fit again with the settings it was made with, or move {latest.parent.parent} away"
        ) from None
    return int(state["step"]), float(state.get("elapsed_s", 0.0))


def load_decoder(run_dir: str | Path) -> tuple[Denoiser, DecoderSettings, dict]:
    """(the fitted network's weight average, in eval mode on the CPU; its settings; the checkpoint's
    ``source`` and ``step``) of RUN/decoder. BadInput when no decoder was fitted on ``run_dir``."""
    checkpoints = checkpointer(run_dir)
    state = read_state(checkpoints)
    if state is None:
        raise BadInput(f"no decoder has been fitted on {run_dir} (no {checkpoints.latest})")
    try:
        denoiser = Denoiser(**{**state["denoiser"], "widths": tuple(state["denoiser"]["widths"])})
        denoiser.load_state_dict(state["ema"])
        settings = DecoderSettings.from_dict(state["settings"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{checkpoints.latest}: cannot build the decoder ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    return denoiser.eval(), settings, {**state["source"], "step": int(state["step"])}
