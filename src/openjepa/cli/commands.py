"""What each command does: parse-free handlers that call the functions anyone can call."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..engine import check_output
from ..errors import BadInput
from ..pretrain import train


def run_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, max_steps=args.max_steps)
    print(f"run directory: {run_dir}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..interop import export_encoder

    out = export_encoder(args.checkpoint, args.format, args.out, args.which)
    print(f"exported the {args.which} encoder of {args.checkpoint} as {args.format} to {out}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..finetune import finetune, load_settings

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


def run_embed(args: argparse.Namespace) -> int:
    from ..evaluate.embed import embed

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


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, format_table

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


def run_submit(args: argparse.Namespace) -> int:
    from ..launch import submit

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


def run_viz(args: argparse.Namespace) -> int:
    from .. import viz

    reads = (args.target, Path(args.target) / "log.csv") if args.what == "curves" else (args.target,)
    out = check_output(args.out, "--out", reads=reads, suffixes=(".png",))
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


def run_report(args: argparse.Namespace) -> int:
    from ..viz import write_report

    if args.out is not None:
        check_output(args.out, "--out", suffixes=(".html",), owned=("report.html",))
    print(f"report: {write_report(args.run_dir, args.out, n_images=args.n, seed=args.seed)}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..bench import bench

    cfg = load_config(args.config, args.overrides)
    if args.loader and args.overhead:
        raise BadInput("--loader and --overhead time different things: give one")
    if args.overhead:
        from ..bench.overhead import overhead

        if len(args.batches) != 2:
            raise BadInput(f"--batches takes two batch sizes, e.g. 1,4; got {','.join(map(str, args.batches))}")
        result = overhead(cfg, steps=args.steps, windows=args.windows, warmup=args.warmup, batches=args.batches)
        shapes = result["shapes"]
        print(
            f"overhead of {result['model']} (depth {shapes['depth']}, {shapes['heads']} heads, {shapes['tokens']} "
            f"tokens, predictor depth {shapes['pred_depth']}, width {shapes['width']}): "
            f"{result['overhead_ms']} ms/step at batch 0 (measured {result['step_ms']}); "
            f"{result['ops_per_step']} ops, {result['kernels_per_step']} kernel-like, "
            f"{result['syncs_per_step']} host syncs per step; masks {result['masks_ms_per_batch']} ms per batch "
            f"of {result['batch_for_masks']}"
        )
        print(json.dumps(result))
        return 0
    if args.loader:
        from ..bench import bench_loader

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


def run_data(args: argparse.Namespace) -> int:
    from ..data.scene_sets import write_scene_folders

    if args.size < 8:
        raise BadInput(f"--size {args.size}: scenes are drawn at 8 pixels or more")
    counts = write_scene_folders(Path(args.out), args.n, args.task, args.size, args.seed, args.test)
    print(
        f"wrote {counts['train']} training and {counts['test']} test scenes ({args.task}) to {args.out}/train and "
        f"{args.out}/test, one folder per class"
    )
    return 0


def run_imagine(args: argparse.Namespace) -> int:
    from ..config import apply_field_overrides
    from ..decoder import DecoderSettings
    from ..viz.decoded import imagine

    settings = apply_field_overrides(DecoderSettings(), args.overrides, "decoder").validate()
    out = imagine(args.run_dir, args.out, args.n, args.samples, args.seed, settings if args.overrides else None)
    print(f"wrote {out} (the decoder: {Path(args.run_dir) / 'decoder'})")
    return 0
