"""The command line's grammar: each command's arguments, parsed by argparse with errors on one line."""

from __future__ import annotations

import argparse

from ..errors import EXIT_BAD_INPUT
from . import commands


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"the numbers must be >= 0, got {text}")
    return values


POSITIVE, NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="openjepa", description="I-JEPA pretraining and reuse")
    subcommands = parser.add_subparsers(dest="command", required=True)
    p = subcommands.add_parser("train", help="pretrain (resumes from RUN/checkpoints/latest.pt if present)")
    p.add_argument("config", help="YAML config (ours or a reference one)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. optimization.epochs=10")
    p.add_argument("--max-steps", type=POSITIVE, default=None, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=commands.run_train)
    p = subcommands.add_parser(
        "eval", help="linear / kNN / low-shot / attentive probes of a frozen encoder, with baselines"
    )
    p.add_argument("checkpoint", help="our checkpoint, a reference .pth.tar, or an exported folder")
    p.add_argument(
        "--data",
        default="fashion_mnist",
        help="fashion_mnist; scenes:count or scenes:dist (procedural scenes, no files; scenes for the dense "
        "protocols); a folder with train/ and val/ (or test/) sub-folders of class folders; or a dense folder",
    )
    p.add_argument("--data-root", default=None, help="where the Fashion-MNIST idx files are (default: searched)")
    p.add_argument(
        "--protocol",
        default="linear,knn,lowshot,attentive",
        help="comma-separated: linear, knn, lowshot, attentive (classification); seg, depth (dense)",
    )
    p.add_argument(
        "--baselines",
        default="random,pixels",
        help="comma-separated: random (same encoder, random init), pixels; '' for none",
    )
    p.add_argument("--which", default="target", choices=["target", "context"])
    p.add_argument(
        "--layers",
        default="last",
        choices=["last", "last4"],
        help="pooled last layer, or the concatenated pooled last 4 layers (the paper's ViT-H protocol)",
    )
    p.add_argument("--out", default=None, help="result JSON (default: RUN/eval/<checkpoint>_<which>.json)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: beside the result)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--num-workers", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="feature extraction; auto: bf16 on CUDA and on CPUs with native bf16",
    )
    p.add_argument(
        "--linear-steps",
        type=POSITIVE,
        default=None,
        help="optimiser steps of each linear probe (default: 100 epochs of its training split, at least 2000)",
    )
    p.add_argument("--attentive-epochs", type=POSITIVE, default=4)
    p.add_argument(
        "--train-limit",
        type=_int_at_least(10),
        default=None,
        help="use this many training images (a seeded random subset) for a quick evaluation",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.run_eval)
    p = subcommands.add_parser("finetune", help="fine-tune an encoder end to end with a classification head")
    p.add_argument("checkpoint", help="our checkpoint, a reference .pth.tar, or an exported folder")
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value fine-tuning settings, e.g. blr=5e-4 layer_decay=0.65 mixup=0.8 (README: Fine-tune and embed)",
    )
    p.add_argument(
        "--data",
        default="fashion_mnist",
        help="fashion_mnist, or a folder with train/ and val/ (and test/) sub-folders of class folders",
    )
    p.add_argument("--data-root", default=None, help="where the Fashion-MNIST idx files are (default: searched)")
    p.add_argument("--out", required=True, help="the run directory (run the same command again to resume)")
    p.add_argument("--epochs", type=POSITIVE, default=None, help="default 10")
    p.add_argument(
        "--labels-fraction",
        type=_fraction,
        default=None,
        help="use this fraction of the training labels (stratified); default 1",
    )
    p.add_argument("--which", default=None, choices=["target", "context"], help="the encoder to start from (target)")
    p.add_argument(
        "--head",
        default=None,
        choices=["linear", "attentive"],
        help="linear on the mean of the patch features (default; exports to HF and timm) or attentive pooling",
    )
    p.add_argument(
        "--random-init", action="store_true", help="the baseline: the checkpoint's architecture, freshly initialised"
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.run_finetune)
    p = subcommands.add_parser("embed", help="pooled features of every image of a folder, with their paths")
    p.add_argument(
        "checkpoint", help="our checkpoint (best.pt of a fine-tuning too), a reference .pth.tar, or an exported folder"
    )
    p.add_argument("--data", required=True, help="a folder of images (searched recursively; any size)")
    p.add_argument("--out", required=True, help="the file to write: .npz or .parquet")
    p.add_argument("--which", default="target", choices=["target", "context"])
    p.add_argument(
        "--pooling",
        default="mean",
        choices=["mean", "last4"],
        help="mean of the last layer's patch features (default) or the last 4 layers' means, concatenated",
    )
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--num-workers", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.run_embed)
    p = subcommands.add_parser("submit", help="queue training on SLURM with submitit (requeued on pre-emption)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--nodes", type=POSITIVE, default=1)
    p.add_argument("--gpus-per-node", type=POSITIVE, default=8)
    p.add_argument("--partition", default=None)
    p.add_argument("--timeout-min", type=POSITIVE, default=4320)
    p.add_argument("--log-dir", default="runs/slurm", help="submitit's folder for job logs and pickles")
    p.add_argument("--local", action="store_true", help="run as a local process instead (tests the launch path)")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its run directory")
    p.set_defaults(func=commands.run_submit)
    p = subcommands.add_parser(
        "viz", help="pictures: masks (from a config), curves (a run dir), features (a checkpoint)"
    )
    p.add_argument("what", choices=["masks", "curves", "features"])
    p.add_argument("target", help="masks: a config; curves: a run directory; features: a training checkpoint")
    p.add_argument("overrides", nargs="*", help="section.key=value (masks, features: e.g. data.root_path=...)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--n", type=POSITIVE, default=8, help="images shown")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=commands.run_viz)
    p = subcommands.add_parser("report", help="write RUN_DIR/report.html: config, curves, masks, features, evaluations")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--n", type=POSITIVE, default=8, help="images shown")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=commands.run_report)
    p = subcommands.add_parser("bench", help="time the training step on synthetic data; last line is JSON")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=POSITIVE, default=10, help="steps per timed window")
    p.add_argument("--windows", type=POSITIVE, default=3, help="timed windows; the median is reported")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=3)
    p.add_argument(
        "--peak-tflops", type=_positive_float, default=None, help="peak for MFU (default: from the GPU's name)"
    )
    p.add_argument(
        "--loader",
        action="store_true",
        help="time the input pipeline alone on the config's data (read, decode, crop, masks); --steps batches",
    )
    p.add_argument("--workers", type=_int_list, default=(0, 1, 2), help="with --loader: the worker counts to time")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="the host's cost of the step: the config's depths, heads and tokens at a width of 4 per head; "
        "ms per step (extrapolated to batch 0), operators, kernel-like operators and host syncs per step",
    )
    p.add_argument(
        "--batches", type=_int_list, default=(1, 4), help="with --overhead: the two batch sizes timed (default 1,4)"
    )
    p.set_defaults(func=commands.run_bench)
    p = subcommands.add_parser(
        "export",
        help="write a checkpoint's encoder (a fine-tuned one with its head) for Hugging Face, timm or safetensors",
    )
    p.add_argument("checkpoint", help="our checkpoint, a reference .pth.tar, or an exported folder")
    p.add_argument("--format", required=True, choices=["hf", "timm", "safetensors"])
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument(
        "--which",
        default="target",
        choices=["target", "context"],
        help="the EMA target encoder (the paper's choice, default) or the context encoder",
    )
    p.set_defaults(func=commands.run_export)
    p = subcommands.add_parser(
        "imagine", help="what the predictor imagines in hidden blocks, drawn by a decoder fitted in RUN/decoder"
    )
    p.add_argument("run_dir", help="a pretraining run directory")
    p.add_argument("--out", required=True, help="the figure (.png)")
    p.add_argument("--n", type=POSITIVE, default=4, help="held-out images (rows)")
    p.add_argument("--samples", type=POSITIVE, default=3, help="samples of each condition")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("overrides", nargs="*", help="decoder settings key=value, e.g. steps=500 condition=context")
    p.set_defaults(func=commands.run_imagine)
    p = subcommands.add_parser("data", help="write a data set to disk: the procedural scenes as class folders")
    p.add_argument("source", choices=["scenes"], help="what to write")
    p.add_argument("--out", required=True, help="a new or empty folder: OUT/train/<class>/, OUT/test/<class>/")
    p.add_argument("--n", type=POSITIVE, required=True, help="training scenes")
    p.add_argument("--test", type=POSITIVE, default=None, help="test scenes (default n / 5)")
    p.add_argument("--task", choices=["count", "dist"], default="count", help="the labels: classes of the folders")
    p.add_argument("--size", type=POSITIVE, default=64, help="pixels a side (default 64)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="which scenes (evaluation uses seed 0)")
    p.set_defaults(func=commands.run_data)
    return parser
