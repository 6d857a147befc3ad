"""Where a run keeps its checkpoints: ``latest.pt`` (what a restart resumes), periodic
``epoch_NNNN.pt`` files (the newest ``keep_last`` kept) and ``best.pt``; all written atomically and
read weights-only (``openjepa.checkpoint``)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import CheckpointError, CorruptCheckpoint, atomic_save, load_checkpoint

log = logging.getLogger("openjepa")


class Checkpointer:
    def __init__(self, folder: Path, keep_last: int = 0):
        self.folder, self.keep_last = Path(folder), keep_last
        self.latest = self.folder / "latest.pt"

    def save(self, state: dict, name: str = "latest.pt") -> Path:
        return atomic_save(state, self.folder / name)

    def save_periodic(self, state: dict, epoch: int) -> None:
        """``epoch_NNNN.pt``, then the oldest periodic files beyond ``keep_last`` (0: all kept) removed."""
        self.save(state, f"epoch_{epoch:04d}.pt")
        for old in sorted(self.folder.glob("epoch_*.pt"))[: -self.keep_last] if self.keep_last else []:
            old.unlink()

    def load_latest(self) -> dict | None:
        """The state in ``latest.pt``, or None when there is none. A checkpoint that cannot be used is
        an error naming it; a corrupt one also names the newest periodic one to fall back on."""
        if not self.latest.exists():
            return None
        try:
            return load_checkpoint(self.latest)
        except CorruptCheckpoint as e:
            periodic = sorted(self.folder.glob("epoch_*.pt"))
            hint = (
                f"; the newest periodic checkpoint is {periodic[-1]}: copy it over latest.pt to resume from it"
                if periodic
                else ""
            )
            raise CheckpointError(f"{e}{hint}") from None


def sections(config: dict) -> dict:
    """{'data': {'batch_size': 8}} -> {'data.batch_size': 8}: a config's sections as dotted keys."""
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


def warn_changed(saved: dict, now: dict, ignore: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Settings (dotted names) whose value differs between the checkpoint's ``saved`` and this run's
    ``now``, leaving out ``ignore`` (names, or whole sections by their name): settings that change
    how a run is computed, not what. Logs a warning naming them; returns them."""
    changed = [
        key
        for key, value in now.items()
        if key not in ignore and key.partition(".")[0] not in ignore and saved.get(key, value) != value
    ]
    if changed:
        log.warning(
            "resuming with changed settings (%s): the run is no longer one uninterrupted run", ", ".join(changed)
        )
    return changed
