"""What pretraining watches while it runs: the collapse of the target features (per token, and
across images on a fixed batch: the collapse probe) and the periodic kNN / RankMe monitor."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..config import Config
from ..data import per_channel
from ..engine.metrics import CSVLog
from ..evaluate.monitor import MONITOR_COLUMNS, collapse_statistics, fixed_batch, monitor, monitor_subset
from ..regularizers import CollapseRegularizer

log = logging.getLogger("openjepa")


class CollapseWatch:
    """Flags (once) a target_std below ``ratio`` times its first logged value."""

    def __init__(self, ratio: float = 0.3):
        self.ratio, self.first, self.warned = ratio, None, False

    def update(self, std: float) -> bool:
        if self.first is None:
            self.first = std
            return False
        if self.warned or std >= self.ratio * self.first:
            return False
        self.warned = True
        return True


class CollapseProbe:
    """At step 0 and every ``logging.collapse_every`` steps: how much the target encoder's pooled
    features depend on the image, on a fixed batch of ``logging.collapse_images`` training images.

    - ``image_rankme``: RankMe of the pooled features after removing their mean over the batch, the
      effective number of directions in which images differ (``evaluate.rankme`` on centred features);
    - ``image_spread``: the spread of the pooled features across images relative to their size,
      sqrt(mean per-dimension variance / mean square): 0 when every image gives the same vector.

    Per-token statistics (``target_std``) cannot see the collapse that matters here: features that
    encode the patch's position and not the image still spread across tokens. The step-0 reading is
    the random encoder's, whose pooled features are mostly the position embeddings' average (ViT-Tiny
    on Fashion-MNIST: image_spread 0.053). A later ``image_spread`` below ``SPREAD_RATIO`` times that
    reading, or an ``image_rankme`` below ``RANKME_FLOOR``, is logged as a warning (once per run):
    the features depend on the image less than a random network's do. The readings go to log.csv,
    TensorBoard and the progress bar."""

    RANKME_FLOOR, SPREAD_RATIO = 4.0, 0.5
    EMPTY = {"image_rankme": "", "image_spread": "", "probe_step": ""}

    def __init__(self, cfg: Config, dataset, main: bool = True):
        d = cfg.data
        self.dataset, self.main = dataset, main
        self.indices = monitor_subset(len(dataset), cfg.logging.collapse_images, cfg.meta.seed + 1)
        self.mean, self.std = per_channel(d.mean, d.in_chans), per_channel(d.std, d.in_chans)
        self.images, self.loaded = None, False  # read once, at the first check
        self.latest = dict(self.EMPTY)
        self.first: dict | None = None  # the step-0 reading
        self.warned = False
        self.advice = (
            "Lower the learning rate, or raise the regularisers' weights"
            if CollapseRegularizer.from_config(cfg.meta).active
            else "Lower the learning rate, or turn on meta.variance_weight / meta.covariance_weight"
        )
        if cfg.meta.objective == "dino":  # no regularisers there: its guards are the centring and the sharpening
            self.advice = "Lower the learning rate, or meta.dino_teacher_temp (a sharper teacher)"

    def state(self) -> dict:
        return {"latest": self.latest, "first": self.first, "warned": self.warned}

    def resume(self, state: dict) -> None:
        self.latest = dict(state.get("latest", self.EMPTY))
        self.first, self.warned = state.get("first"), bool(state.get("warned", False))

    @classmethod
    def reasons(cls, reading: dict, first: dict | None) -> list[str]:
        """Which floors the reading is under, in words: image_rankme under RANKME_FLOOR, image_spread
        under SPREAD_RATIO times the step-0 reading (none: not collapsed)."""
        why = []
        if reading["image_rankme"] < cls.RANKME_FLOOR:
            why.append(
                f"image_rankme {reading['image_rankme']:.1f} is under the floor of {cls.RANKME_FLOOR:.0f}: "
                f"the pooled features vary along only a few directions"
            )
        if first is not None and reading["image_spread"] < cls.SPREAD_RATIO * first["image_spread"]:
            why.append(
                f"image_spread {reading['image_spread']:.3f} is under {cls.SPREAD_RATIO:g} x the random "
                f"encoder's {first['image_spread']:.3f} at step 0: the features depend on the image less than "
                f"a random network's do"
            )
        return why

    @classmethod
    def collapsed(cls, reading: dict, first: dict | None) -> bool:
        return bool(cls.reasons(reading, first))

    def check(self, encoder: nn.Module, step: int) -> dict:
        """Read the probe (in fp32 whatever the run's autocast: bf16 rounding alone adds directions
        to a RankMe of nearly identical features)."""
        if not self.loaded:
            self.images = fixed_batch(self.dataset, self.indices, encoder.img_size)  # skipped ones are logged
            self.loaded = True
        if self.images is None or len(self.images) < 2:
            return self.latest  # nothing to measure a spread on
        fp32 = torch.autocast(next(encoder.parameters()).device.type, enabled=False)
        stats = collapse_statistics(encoder, self.images, self.mean, self.std, fp32)
        self.latest = {**{key: round(value, 4) for key, value in stats.items()}, "probe_step": step}
        if not self.main:
            return self.latest
        if step == 0:
            self.first = self.latest
        log.info(
            "collapse probe at step %d: image_rankme %.1f, image_spread %.3f%s",
            step,
            stats["image_rankme"],
            stats["image_spread"],
            " (the random initial encoder)" if step == 0 else "",
        )
        if step > 0 and not self.warned and self.collapsed(self.latest, self.first):
            self.warned = True
            log.warning(
                "the features are collapsing: at step %d, on the target encoder's pooled features of %d images, "
                "%s. %s (see the README's Collapse section)",
                step,
                len(self.images),
                "; and ".join(self.reasons(self.latest, self.first)),
                self.advice,
            )
        return self.latest


class Monitor:
    """Every ``logging.monitor_every`` epochs: kNN accuracy, RankMe and feature spread of the
    target encoder on a fixed subset (see ``evaluate.monitor``), to monitor.csv and TensorBoard,
    with a warning when RankMe or the spread falls below half its first value."""

    def __init__(self, cfg: Config, dataset, run_dir: Path, start_step: int, writer, main: bool = True):
        d = cfg.data
        self.dataset, self.writer, self.columns = dataset, writer, MONITOR_COLUMNS
        self.indices = monitor_subset(len(dataset), cfg.logging.monitor_images, cfg.meta.seed)
        self.mean, self.std = per_channel(d.mean, d.in_chans), per_channel(d.std, d.in_chans)
        self.log = CSVLog(run_dir / "monitor.csv", start_step, MONITOR_COLUMNS) if main else None
        rows = self.log.rows if main else []
        self.first = {k: float(rows[0][k]) for k in ("rankme", "feature_std")} if rows else None
        self.warned = False

    def check(self, encoder: nn.Module, autocast, step: int, epoch: int) -> dict:
        t0 = time.perf_counter()
        row = {
            "step": step,
            "epoch": epoch,
            **monitor(encoder, self.dataset, self.indices, self.mean, self.std, autocast),
        }
        if self.log is None:  # a process other than 0 under FSDP: it took part in the forward passes
            return row
        self.log.append(row)
        if self.writer is not None:
            for key in self.columns[2:]:
                if row[key] is not None:
                    self.writer.add_scalar(f"monitor/{key}", row[key], step)
        knn = "n/a (no labels)" if row["knn_acc"] is None else f"{100 * row['knn_acc']:.1f}%"
        log.info(
            "monitor at epoch %d: kNN@20 %s, RankMe %.1f, feature_std %.4f (%.1f s)",
            epoch,
            knn,
            row["rankme"],
            row["feature_std"],
            time.perf_counter() - t0,
        )
        if self.first is None:
            self.first = {k: row[k] for k in ("rankme", "feature_std")}
        elif not self.warned and any(row[k] < 0.5 * self.first[k] for k in self.first):
            self.warned = True
            log.warning(
                "the representation may be collapsing: RankMe %.1f (first %.1f), feature_std %.4f (first %.4f) "
                "at epoch %d",
                row["rankme"],
                self.first["rankme"],
                row["feature_std"],
                self.first["feature_std"],
                epoch,
            )
        return row
