"""Evaluation of frozen encoders with the paper's protocols, and the baselines that give the
numbers meaning.

``evaluate(checkpoint, data)`` extracts features once (cached), runs the chosen protocols —
linear probe (a grid of heads, chosen on a validation split), weighted kNN, low-shot linear
probes and the attentive probe — on the I-JEPA encoder and, as baselines, on a randomly
initialised encoder of the same size and on raw pixels, then writes one JSON result.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from ..api import make_callable
from ..data.labelled import load_eval_data
from ..device import resolve_precision
from ..models.vit import VisionTransformer
from .attentive import AttentiveProbe, attentive_probe
from .dense_eval import DENSE_PROTOCOLS, dense_figure, run_dense
from .features import (
    Features,
    cache_path,
    cached_extract,
    extract,
    file_key,
    pixel_features,
    prepare,
    source_of,
    warn_skipped,
)
from .knn import knn_eval, knn_predict
from .linear import linear_probe, stratified_split
from .lowshot import lowshot_eval, lowshot_subset
from .rankme import feature_std, rankme

CLASSIFICATION = ("linear", "knn", "lowshot", "attentive")
PROTOCOLS = CLASSIFICATION + DENSE_PROTOCOLS
BASELINES = ("random", "pixels")
PIXEL_PROTOCOLS = ("linear", "knn", "lowshot")  # the attentive probe needs patch tokens
LISTED = 100  # unreadable files named per split in a result (all are counted)


def random_encoder(like: VisionTransformer, seed: int = 0) -> VisionTransformer:
    """The baseline: the same architecture and normalisation, freshly initialised."""
    with torch.random.fork_rng():  # leave the caller's random stream as it was
        torch.manual_seed(seed)
        encoder = VisionTransformer(**like.config())
    encoder.mean, encoder.std = like.mean, like.std
    return encoder.eval()


def fits_on(device: torch.device, *tensors: torch.Tensor) -> bool:
    """Whether the features leave room on the GPU for the probes' copies (standardised, low-shot):
    at most a quarter of its free memory; else the probes stay on the CPU."""
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < free / 4


def run_protocols(
    train: Features,
    test: Features,
    protocols,
    seed: int = 0,
    layers: str = "last",
    linear_steps: int | None = None,
    attentive_epochs: int = 4,
    device: torch.device | None = None,
) -> dict:
    """Every protocol on one pair of feature sets (``layers``: 'last' pooled, or 'last4' concatenated).
    With a CUDA ``device`` the linear, low-shot and kNN probes run there (same splits and batches)."""
    x_train, x_test = (train.pooled, test.pooled) if layers == "last" else (train.last4, test.last4)
    y_train, y_test = train.labels, test.labels
    if device is not None and device.type == "cuda" and fits_on(device, x_train, x_test):
        x_train, x_test, y_train, y_test = (t.to(device) for t in (x_train, x_test, y_train, y_test))
    out = {}
    for name in protocols:
        t0 = time.perf_counter()
        if name == "linear":
            out[name] = linear_probe(x_train, y_train, x_test, y_test, seed=seed, steps=linear_steps)
        elif name == "knn":
            out[name] = knn_eval(x_train, y_train, x_test, y_test)
        elif name == "lowshot":
            out[name] = lowshot_eval(x_train, y_train, x_test, y_test, steps=linear_steps)
        elif name == "attentive":
            out[name] = attentive_probe(
                train.patches, train.labels, test.patches, test.labels, seed=seed, epochs=attentive_epochs
            )
        out[name]["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def hardware() -> dict:
    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    return info


def headline(result: dict) -> dict:
    """One number per protocol: linear and attentive test accuracy, kNN at k=20, low-shot means,
    segmentation mIoU, depth RMSE (in the depth's units) and delta1."""
    row = {}
    for name, r in result.items():
        if name in ("linear", "attentive"):
            row[name] = r["test_acc"]
        elif name == "knn":
            row["knn@20"] = r.get("k=20")
        elif name == "lowshot":
            row.update({f"{float(f):.0%} labels": v["mean"] for f, v in r.items() if isinstance(v, dict)})
        elif name == "seg":
            row["seg mIoU"] = r["miou"]
        elif name == "depth":
            row.update({"depth RMSE": r["rmse"], "depth δ1": r["delta1"]})
        elif name == "rankme":
            row["rankme"] = r
    return row


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column == "rankme":
        return f"{value:.1f}"
    return f"{value:.3f}" if column == "depth RMSE" else f"{100 * value:.1f}"


def headline_cells(results: dict) -> tuple[list[str], dict[str, list[str]]]:
    """(column names, {encoder: formatted cells}): accuracies and shares in %, RankMe and RMSE as
    they are, blank where missing."""
    rows = {enc: headline(r) for enc, r in results.items()}
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    return cols, {enc: [_cell(c, r.get(c)) for c in cols] for enc, r in rows.items()}


def format_table(results: dict) -> str:
    """A markdown table: one row per encoder, one column per headline number."""
    cols, rows = headline_cells(results)
    lines = ["| encoder | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {enc} | " + " | ".join(cells) + " |" for enc, cells in rows.items()]
    return "\n".join(lines)


def evaluate(
    checkpoint: str | Path,
    data: str = "fashion_mnist",
    protocols=PROTOCOLS,
    baselines=BASELINES,
    which: str = "target",
    layers: str = "last",
    data_root: str | None = None,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    device: str = "auto",
    precision: str = "auto",
    linear_steps: int | None = None,
    attentive_epochs: int = 4,
    train_limit: int | None = None,
) -> dict:
    """Evaluate a checkpoint (any format ``load_encoder`` reads) and write the JSON result to
    ``out`` (default: ``RUN/eval/<checkpoint>_<which>.json`` beside a run's checkpoints folder).
    ``train_limit`` keeps that many training images (a seeded random subset: a quick evaluation);
    the test set is always whole."""
    from ..device import resolve_device
    from ..engine import check_output
    from ..errors import BadInput, check_writable_folder
    from ..interop import load_encoder

    unknown = [p for p in protocols if p not in PROTOCOLS] + [b for b in baselines if b not in BASELINES]
    if unknown:
        raise BadInput(
            f"unknown protocol or baseline {', '.join(unknown)}: choose from "
            f"{', '.join(PROTOCOLS)} / baselines {', '.join(BASELINES)}"
        )
    if not protocols:
        raise BadInput(f"no protocol chosen: choose from {', '.join(PROTOCOLS)}")
    if layers not in ("last", "last4"):
        raise BadInput(f"layers must be 'last' or 'last4', got {layers!r}")
    for name, value, low in (
        ("linear_steps", linear_steps, 1),
        ("attentive_epochs", attentive_epochs, 1),
        ("batch_size", batch_size, 1),
        ("train_limit", train_limit, 10),
    ):
        if value is not None and value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    checkpoint = Path(checkpoint)
    out = Path(out) if out else default_result_path(checkpoint, which)
    out = check_output(out, "the result", reads=(checkpoint,), suffixes=(".json",), owned=("eval/*.json",))
    if cache_dir is not None:
        check_writable_folder(cache_dir, "the feature cache")
    dev = resolve_device(device, "device")  # before the work: a device that is not there is the user's mistake
    t_start = time.perf_counter()
    encoder = load_encoder(checkpoint, which)
    precision = resolve_precision(precision, dev)
    results, monitor, skipped, sizes = {}, {}, {"train": [], "test": []}, {"train": None, "test": None}
    classify = [p for p in protocols if p in CLASSIFICATION]
    if classify:
        data_args = (data, data_root, train_limit, cache_dir, out, batch_size, num_workers, progress, precision, dev)
        results, monitor, skipped, sizes = _classification(
            encoder, checkpoint, which, classify, baselines, seed, layers, linear_steps, attentive_epochs, *data_args
        )
    dense = [p for p in protocols if p in DENSE_PROTOCOLS]
    figure = None
    if dense:
        encoders = {"ijepa": encoder, **({"random": random_encoder(encoder, seed)} if "random" in baselines else {})}
        dense_results, shown = run_dense(
            encoders, data, dense, "pixels" in baselines, seed, batch_size, num_workers, progress, precision, dev
        )
        for name, values in dense_results.items():
            results.setdefault(name, {}).update(values)
        figure = dense_figure(shown, out.with_name(f"{out.stem}_dense.png"))

    notes = protocol_notes(results, sizes["train"]) if classify else []
    if dense and train_limit:
        notes.append("train_limit applies to the classification probes; the dense probes used their own sizes")
    if skipped["train"] or skipped["test"]:
        notes.insert(
            0,
            f"{len(skipped['train'])} training and {len(skipped['test'])} test image(s) cannot be read "
            f"and were left out (named under 'skipped'): the numbers are of the {sizes['train']} and "
            f"{sizes['test']} readable ones",
        )
    record = {
        "protocols": list(protocols),
        "results": results,
        "notes": notes,
        "features": monitor,
        "layers": layers,
        "precision": precision,
        "linear_steps": linear_steps,
        "attentive_epochs": attentive_epochs,
        "checkpoint": str(checkpoint),
        "which": which,
        "dataset": data,
        "train_size": sizes["train"],
        "test_size": sizes["test"],
        "train_limit": train_limit,
        "seed": seed,
        "skipped": {split: {"count": len(paths), "paths": paths[:LISTED]} for split, paths in skipped.items()},
        "dense_figure": str(figure) if figure is not None else None,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "hardware": hardware(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    record["path"] = str(out)
    return record


def _classification(
    encoder,
    checkpoint,
    which,
    protocols,
    baselines,
    seed,
    layers,
    linear_steps,
    attentive_epochs,
    data,
    data_root,
    train_limit,
    cache_dir,
    out,
    batch_size,
    num_workers,
    progress,
    precision,
    dev,
):
    """The classification protocols on the encoder and the baselines: (results, feature statistics,
    the unreadable files of each split, the sizes of the splits)."""
    train_set, test_set = load_eval_data(data, encoder.in_chans, data_root, encoder.img_size[0])
    # What the features were computed from: a folder's files (names, sizes, times), not only its path.
    files = {
        split: ds.fingerprint()
        for split, ds in (("train", train_set), ("test", test_set))
        if hasattr(ds, "fingerprint")
    }
    if train_limit is not None:
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:train_limit]
        train_set = torch.utils.data.Subset(train_set, keep.sort().values.tolist())
    cache_dir = Path(cache_dir) if cache_dir else out.parent / "cache"
    data_key = {
        "data": str(Path(data).resolve()) if Path(data).is_dir() else data,
        "root": data_root,
        "size": list(encoder.img_size),
        "mean": encoder.mean,
        "std": encoder.std,
        "precision": precision,
        **({"train_limit": train_limit, "subset_seed": seed} if train_limit else {}),
    }
    patches = "attentive" in protocols
    encoders = {"ijepa": (encoder, {"checkpoint": file_key(checkpoint), "which": which})}
    if "random" in baselines:
        encoders["random"] = (random_encoder(encoder, seed), {"random": encoder.config(), "seed": seed})

    results, monitor, skipped, sizes = {}, {}, {}, {}
    for name, (enc, key) in encoders.items():
        enc.to(dev)
        feats = {
            split: cached_extract(
                enc,
                ds,
                cache_path(cache_dir, **key, **data_key, split=split, files=files.get(split)),
                patches=patches,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
                desc=f"{name} {split} features",
                precision=precision,
            )
            for split, ds in (("train", train_set), ("test", test_set))
        }
        if not sizes:  # the same files are unreadable whichever encoder reads them: said once
            for split, ds in (("train", train_set), ("test", test_set)):
                skipped[split], sizes[split] = feats[split].skipped, len(feats[split].labels)
                warn_skipped(f"eval, {split} split ({source_of(ds)})", skipped[split], len(ds))
        results[name] = run_protocols(
            feats["train"], feats["test"], protocols, seed, layers, linear_steps, attentive_epochs, dev
        )
        results[name]["rankme"] = rankme(feats["test"].pooled)
        monitor[name] = {"rankme": results[name]["rankme"], "feature_std": feature_std(feats["test"].pooled)}
    if "pixels" in baselines:
        (x_tr, y_tr), (x_te, y_te) = (pixel_features(ds, encoder.img_size) for ds in (train_set, test_set))
        pix_train = Features(x_tr, x_tr, None, y_tr)
        pix_test = Features(x_te, x_te, None, y_te)
        results["pixels"] = run_protocols(
            pix_train,
            pix_test,
            [p for p in protocols if p in PIXEL_PROTOCOLS],
            seed,
            linear_steps=linear_steps,
            device=dev,
        )

    return results, monitor, skipped, sizes


def protocol_notes(results: dict, train_size: int) -> list[str]:
    """What a reader of the numbers must know: neighbour counts that a small training set could not
    give, low-shot subsets larger than their nominal fraction (at least two labels per class)."""
    notes = []
    knn = next((r["knn"] for r in results.values() if "knn" in r), None)
    if knn and knn.get("skipped_k"):
        notes.append(
            f"kNN at k={', '.join(map(str, knn['skipped_k']))} not reported: the training set has {train_size} images"
        )
    lowshot = next((r["lowshot"] for r in results.values() if "lowshot" in r), None)
    for fraction, r in (lowshot or {}).items():
        if isinstance(r, dict) and r["labels_per_subset"] > 1.5 * float(fraction) * train_size:
            notes.append(
                f"'{float(fraction):.0%} labels' used {r['labels_per_subset']} of {train_size} labels "
                f"({r['labels_per_subset'] / train_size:.0%}): at least two per class"
            )
    return notes


def default_result_path(checkpoint: Path, which: str) -> Path:
    parent = checkpoint.parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / "eval" / f"{checkpoint.stem}_{which}.json"


__all__ = [
    "evaluate",
    "extract",
    "cached_extract",
    "prepare",
    "linear_probe",
    "knn_predict",
    "knn_eval",
    "lowshot_eval",
    "lowshot_subset",
    "attentive_probe",
    "AttentiveProbe",
    "rankme",
    "feature_std",
    "stratified_split",
    "random_encoder",
    "format_table",
    "headline_cells",
    "load_eval_data",
    "PROTOCOLS",
    "BASELINES",
]

make_callable(__name__, evaluate)
