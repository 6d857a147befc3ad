"""`openjepa` command line: parsing only; the work is done by functions anyone can call."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import load_config
from .engine import Preempted, TrainingError
from .errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PREEMPTED, BadInput, check_output_file
from .pretrain import train


class _Parser(argparse.ArgumentParser):
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
        raise argparse.ArgumentTypeError(f"worker counts must be >= 0, got {text}")
    return values


POSITIVE, NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, max_steps=args.max_steps)
    print(f"run directory: {run_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .interop import export_encoder

    out = export_encoder(args.checkpoint, args.format, args.out, args.which)
    print(f"exported the {args.which} encoder of {args.checkpoint} as {args.format} to {out}")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _finetune(args: argparse.Namespace) -> int:
    from .finetune import finetune, load_settings

    ft = load_settings(
        args.overrides,
        epochs=args.epochs,
        labels_fraction=args.labels_fraction,
        which=args.which,
        head=args.head,
        device=args.device,
        random_init=args.random_init or None,
        progress_bar=False if args.no_progress else None,
    )
    record = finetune(args.checkpoint, args.out, args.data, ft, args.data_root)
    print(
        f"test accuracy {100 * record['test_acc']:.2f}% (best epoch {record['best_epoch']} of "
        f"{ft.epochs} on the validation split; the last epoch's weights: {100 * record['test_acc_last']:.2f}%)"
    )
    print(f"run directory: {args.out} (checkpoints/best.pt, result.json)")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .evaluate.embed import embed

    summary = embed(
        args.checkpoint,
        args.data,
        args.out,
        args.which,
        args.pooling,
        args.batch_size,
        args.num_workers,
        args.device,
        args.precision,
        progress=not args.no_progress,
    )
    print(
        f"wrote {summary['images']} {summary['dim']}-d embeddings to {summary['out']}"
        + (f" ({summary['skipped']} unreadable image(s) left out and listed)" if summary["skipped"] else "")
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    split = lambda text: [t for t in text.split(",") if t]  # noqa: E731
    record = evaluate(
        args.checkpoint,
        args.data,
        split(args.protocol),
        split(args.baselines),
        args.which,
        args.layers,
        args.data_root,
        args.cache_dir,
        args.out,
        args.seed,
        args.batch_size,
        args.num_workers,
        progress=not args.no_progress,
        device=args.device,
        precision=args.precision,
        linear_steps=args.linear_steps,
        attentive_epochs=args.attentive_epochs,
        train_limit=args.train_limit,
    )
    print(format_table(record["results"]))
    for note in record.get("notes", []):
        print(f"note: {note}")
    print(f"result: {record['path']} ({record['wall_s']} s)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from .launch import submit

    cfg = load_config(args.config, args.overrides)
    job = submit(
        cfg,
        args.log_dir,
        args.nodes,
        args.gpus_per_node,
        args.partition,
        args.timeout_min,
        cluster="local" if args.local else None,
    )
    print(f"submitted job {job.job_id}; its logs: {args.log_dir}; the run directory: {cfg.logging.folder}")
    if args.wait:
        print(f"run directory: {job.result()}")
    return 0


def _viz(args: argparse.Namespace) -> int:
    from . import viz

    out = check_output_file(args.out, "--out")
    if out.suffix.lower() != ".png":
        raise BadInput(f"--out {out}: the picture is a PNG; give a file name ending in .png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.what == "masks":
        cfg = load_config(args.target, args.overrides)
        viz.mask_grid(viz.sample_images(cfg, args.n, args.seed), cfg, seed=args.seed).save(out)
    elif args.what == "curves":
        out.write_bytes(viz.curves_png(args.target))
    else:
        viz.feature_figure_for(Path(args.target), args.overrides, args.n, args.seed).save(out)
    print(f"wrote {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .viz import write_report

    if args.out is not None:
        check_output_file(args.out, "--out")
    print(f"report: {write_report(args.run_dir, args.out, n_images=args.n, seed=args.seed)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from .bench import bench

    cfg = load_config(args.config, args.overrides)
    if args.loader:
        from .bench import bench_loader

        result = bench_loader(cfg, batches=args.steps, workers=args.workers, warmup=args.warmup)
        print(
            f"loader, {result['dataset']} ({result['images']} images, decoded on {result['decode_on']}), "
            f"batch {result['batch']} at "
            f"{result['crop_size']} px; masks {result['masks_us_per_img']} us/image"
        )
        for n, rate in result["img_per_s"].items():
            print(f"  {n} worker(s): {rate} img/s ({result['img_per_s_per_worker'][n]} per worker)")
        print(json.dumps(result))
        return 0
    result = bench(cfg, steps=args.steps, windows=args.windows, warmup=args.warmup, peak=args.peak_tflops)
    print("phases (ms): " + ", ".join(f"{k} {v}" for k, v in result["phases_ms"].items()))
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="openjepa", description="I-JEPA pretraining and reuse")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="pretrain (resumes from RUN/checkpoints/latest.pt if present)")
    p.add_argument("config", help="YAML config (ours or a reference one)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. optimization.epochs=10")
    p.add_argument("--max-steps", type=POSITIVE, default=None, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=_train)
    p = commands.add_parser(
        "eval", help="linear / kNN / low-shot / attentive probes of a frozen encoder, with baselines"
    )
    p.add_argument("checkpoint", help="our checkpoint, a reference .pth.tar, or an exported folder")
    p.add_argument(
        "--data",
        default="fashion_mnist",
        help="fashion_mnist, or a folder with train/ and val/ (or test/) sub-folders of class folders",
    )
    p.add_argument("--data-root", default=None, help="where the Fashion-MNIST idx files are (default: searched)")
    p.add_argument("--protocol", default="linear,knn,lowshot,attentive", help="comma-separated protocols")
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
    p.set_defaults(func=_eval)
    p = commands.add_parser("finetune", help="fine-tune an encoder end to end with a classification head")
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
    p.set_defaults(func=_finetune)
    p = commands.add_parser("embed", help="pooled features of every image of a folder, with their paths")
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
    p.set_defaults(func=_embed)
    p = commands.add_parser("submit", help="queue training on SLURM with submitit (requeued on pre-emption)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--nodes", type=POSITIVE, default=1)
    p.add_argument("--gpus-per-node", type=POSITIVE, default=8)
    p.add_argument("--partition", default=None)
    p.add_argument("--timeout-min", type=POSITIVE, default=4320)
    p.add_argument("--log-dir", default="runs/slurm", help="submitit's folder for job logs and pickles")
    p.add_argument("--local", action="store_true", help="run as a local process instead (tests the launch path)")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its run directory")
    p.set_defaults(func=_submit)
    p = commands.add_parser("viz", help="pictures: masks (from a config), curves (a run dir), features (a checkpoint)")
    p.add_argument("what", choices=["masks", "curves", "features"])
    p.add_argument("target", help="masks: a config; curves: a run directory; features: a training checkpoint")
    p.add_argument("overrides", nargs="*", help="section.key=value (masks, features: e.g. data.root_path=...)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--n", type=POSITIVE, default=8, help="images shown")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_viz)
    p = commands.add_parser("report", help="write RUN_DIR/report.html: config, curves, masks, features, evaluations")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--n", type=POSITIVE, default=8, help="images shown")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_report)
    p = commands.add_parser("bench", help="time the training step on synthetic data; last line is JSON")
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
    p.set_defaults(func=_bench)
    p = commands.add_parser(
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
    p.set_defaults(func=_export)
    args, rest = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (argparse takes a positional list only before them)
    if (
        rest
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in r and not r.startswith("-") for r in rest)
    ):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except BadInput as e:  # ConfigError, DataError, CheckpointError: the user's input, said in one line
        print(f"openjepa: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as e:
        print(f"openjepa: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED if e.signum == signal.SIGINT else EXIT_PREEMPTED
    except TrainingError as e:
        print(f"openjepa: training stopped: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("openjepa: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Anything else (an error inside torch, numpy, a loader worker, ...) is a bug or a machine failure:
    # its traceback is what a report needs, so it is not caught here.


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
