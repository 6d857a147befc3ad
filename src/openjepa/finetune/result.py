"""Fine-tuning's evaluation: the accuracy of a classifier on a split, and the run's result."""

from __future__ import annotations

import json
import logging
import time

import torch

from ..checkpoint import load_checkpoint
from ..data import DataError
from ..data.transforms import normalize, per_channel
from ..evaluate.features import read_batches, warn_skipped
from ..models.heads import Classifier

log = logging.getLogger("openjepa")


@torch.inference_mode()
def accuracy_on(
    model: Classifier, dataset, device: torch.device, autocast, batch_size: int = 256, num_workers: int = 0
) -> tuple[float, int, list[str]]:
    """(top-1 accuracy, images scored, paths of the unreadable ones left out) of ``model`` on
    ``dataset`` (resized and centre-cropped to its size)."""
    model.eval()
    mean, std = per_channel(model.mean, model.in_chans), per_channel(model.std, model.in_chans)
    correct, seen, skipped = 0, 0, []
    for images, labels, unreadable in read_batches(
        dataset, model.img_size, batch_size=batch_size, num_workers=num_workers
    ):
        skipped += unreadable
        if images is None:
            continue
        with autocast:
            logits = model(normalize(images.float(), mean, std).to(device))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        seen += len(labels)
    if not seen:
        raise DataError(f"no image of the evaluation split can be read ({len(skipped)} unreadable)")
    return correct / seen, seen, skipped


def write_result(
    run_dir,
    model,
    splits,
    device,
    autocast,
    ft,
    settings,
    source,
    data,
    best,
    history,
    batch,
    steps_per_epoch,
    skipped_train: list[str],
) -> dict:
    """Test accuracy of the last epoch's weights and of best.pt's, and everything about the run."""
    from ..evaluate import hardware

    last_acc, _, _ = accuracy_on(model, splits.test, device, autocast, ft.eval_batch_size, ft.num_workers)
    best_path = run_dir / "checkpoints" / "best.pt"
    if best_path.exists():
        model.load_state_dict(load_checkpoint(best_path)["model"])
    else:  # removed by hand: the last weights are all there is to report
        log.warning("%s is missing: reporting the last epoch's weights as the result", best_path)
        best = {"epoch": None, "val_acc": None}
    test_acc, test_n, test_skipped = accuracy_on(
        model, splits.test, device, autocast, ft.eval_batch_size, ft.num_workers
    )
    warn_skipped("fine-tuning, test split", test_skipped)
    train_s = history[-1]["elapsed_s"] if history else 0.0
    record = {
        "test_acc": round(test_acc, 5),
        "test_acc_last": round(last_acc, 5),
        "best_epoch": best["epoch"],
        "val_acc": best["val_acc"],
        "history": history,
        "classes": splits.classes,
        "sizes": {
            "train_labelled": len(splits.fit),
            "train_split": len(splits.train),
            "val": len(splits.val),
            "test_scored": test_n,
            "val_held_out_of_train": splits.held_out,
            "train_unlabelled_left_out": splits.unlabelled,
        },
        "skipped": {
            "train": skipped_train[:100],
            "train_count": len(skipped_train),
            "test": test_skipped[:100],
            "test_count": len(test_skipped),
        },
        "steps_per_epoch": steps_per_epoch,
        "batch": batch,
        "source": source,
        "data": data,
        "settings": settings,
        "train_minutes": round(train_s / 60, 2),
        "hardware": hardware(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    tmp = run_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(run_dir / "result.json")
    log.info(
        "test accuracy %.2f%% (best.pt, epoch %s of %d; the last epoch's weights: %.2f%%); %s",
        100 * test_acc,
        best["epoch"],
        ft.epochs,
        100 * last_acc,
        run_dir / "result.json",
    )
    return record
