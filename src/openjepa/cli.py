"""`openjepa` command line: parsing only; the work is done by functions anyone can call."""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError
from .config import load_config
from .train import Preempted, TrainingError, train

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving; rerun to resume


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


def _bench(args: argparse.Namespace) -> int:
    import json

    from .bench import bench

    cfg = load_config(args.config, args.overrides)
    result = bench(cfg, steps=args.steps, windows=args.windows, warmup=args.warmup, peak=args.peak_tflops)
    print("phases (ms): " + ", ".join(f"{k} {v}" for k, v in result["phases_ms"].items()))
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openjepa", description="I-JEPA pretraining and reuse")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="pretrain (resumes from RUN/checkpoints/latest.pt if present)")
    p.add_argument("config", help="YAML config (ours or a reference one)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. optimization.epochs=10")
    p.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=_train)
    p = commands.add_parser("bench", help="time the training step on synthetic data; last line is JSON")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: from the GPU's name)")
    p.set_defaults(func=_bench)
    p = commands.add_parser("export", help="write a checkpoint's encoder for Hugging Face, timm or safetensors")
    p.add_argument("checkpoint", help="our checkpoint, a reference .pth.tar, or an exported folder")
    p.add_argument("--format", required=True, choices=["hf", "timm", "safetensors"])
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--which", default="target", choices=["target", "context"],
                   help="the EMA target encoder (the paper's choice, default) or the context encoder")
    p.set_defaults(func=_export)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, CheckpointError) as e:  # ConfigError and DataError are ValueErrors
        print(f"openjepa: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as e:
        print(f"openjepa: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except TrainingError as e:
        print(f"openjepa: training stopped: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
