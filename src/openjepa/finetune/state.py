"""What a fine-tuning checkpoint holds, and what a resume takes back from it."""

from __future__ import annotations

from ..checkpoint import FINETUNE_FORMAT, CheckpointError
from ..engine import Checkpointer, warn_changed
from ..models.heads import Classifier

# Settings a resume may change without a warning: they change how the run is computed, not what.
NOT_MATHEMATICS = frozenset(
    {"num_workers", "progress_bar", "tensorboard", "log_every", "eval_batch_size", "device", "eval_every"}
)


class FinetuneState:
    """A fine-tuning run's checkpoints: what they hold, and what a resume takes back from them."""

    def __init__(
        self,
        checkpoints: Checkpointer,
        model: Classifier,
        steps_per_epoch: int,
        settings: dict,
        source: dict,
        data: str,
    ):
        self.checkpoints, self.model, self.steps_per_epoch = checkpoints, model, steps_per_epoch
        self.settings, self.source, self.data = settings, source, data

    def save(self, name: str, optimizer, step: int, best: dict, history: list, elapsed: float) -> None:
        epoch, position = divmod(step, self.steps_per_epoch)
        state = {
            "format": FINETUNE_FORMAT,
            "version": 1,
            "classifier": self.model.config(),
            "model": self.model.state_dict(),
            "epoch": epoch,
            "position": position,
            "best": best,
            "history": history,
            "settings": self.settings,
            "source": self.source,
            "data": self.data,
            "elapsed_s": elapsed,
        }
        if optimizer is not None:
            state["opt"] = optimizer.state_dict()
        self.checkpoints.save(state, name)

    def restore(self, state: dict, optimizer) -> tuple[int, dict, list, float]:
        """(the step to resume at, the best epoch, the history, the time of earlier sessions)."""
        what = "the checkpoint or data"
        warn_changed(
            {**state["settings"], what: (state.get("source"), state.get("data"))},
            {**self.settings, what: (self.source, self.data)},
            NOT_MATHEMATICS,
        )
        saved, now = state.get("classifier", {}), self.model.config()
        for key, what in (("head", "head"), ("classes", "classes"), ("encoder", "encoder (size, patch or image size)")):
            if key in saved and saved[key] != now[key]:
                shown = f" ({saved[key]} there, {now[key]} here)" if key == "head" else ""
                raise CheckpointError(
                    f"{self.checkpoints.latest} fine-tunes another classifier: its {what} differs{shown}; resume with "
                    f"the same checkpoint, data and head, or give a new --out"
                )
        try:
            self.model.load_state_dict(state["model"])
            groups = [(g["lr_scale"], g["weight_decay"]) for g in optimizer.param_groups]
            optimizer.load_state_dict(state["opt"])
            for group, (scale, decay) in zip(optimizer.param_groups, groups):  # this run's settings, not the saved ones
                group["lr_scale"], group["weight_decay"] = scale, decay
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{self.checkpoints.latest} does not match this fine-tuning run ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}); give a new --out"
            ) from None
        step = int(state["epoch"]) * self.steps_per_epoch + int(state["position"])
        return step, dict(state["best"]), list(state["history"]), float(state.get("elapsed_s", 0.0))
