"""The paper's four claims at one budget (issue 38): every arm pretrains the same number of images on
each domain, checkpoints at a few points of its schedule (the efficiency curve), is evaluated with
the same protocols, and BENCHMARKS.md "The paper's claims at a laptop budget" is rewritten from the
results (bench/claims_table.py): one table per claim, each ending in its verdict.

    python bench/claims.py                                   # both domains, every arm, ~2 h on 2 CPU cores
    python bench/claims.py --domains fmnist --arms I-JEPA,DINO --images 20000
    python bench/claims.py --table-only                      # rewrite the section from the results so far

Arms: I-JEPA (the domain's recipe: C-JEPA's variance/covariance terms on), I-JEPA plain (those
terms off: the paper's method), pixel targets, block / rasterized / random masking (each the
recipe with one change), DINO (meta.objective: dino, its own augmentations, the same ViT,
optimiser, LR and schedules); random init and raw pixels come with the I-JEPA arm's evaluation.
Domains: Fashion-MNIST (configs/fmnist_vit_tiny.yaml; linear probe and 1% labels) and the
procedural scenes (configs/scenes_cpu.yaml at ViT-Tiny; count and dist with linear and attentive
probes, seg mIoU, depth RMSE). The claims' own comparisons that their verdict leaves within noise
get seeds 1.. too (--seeds).

Everything resumes: a run continues from its latest checkpoint, an evaluation whose JSON exists is
read back, so an interrupted call loses at most one segment or one evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from claims_table import ARMS, CURVE_TASKS, DOMAIN_TASKS, close_pairs, write_section
from fmnist import machine, pretrain_seconds
from openjepa.config import load_config
from openjepa.evaluate import evaluate, headline
from openjepa.pretrain import train

ROOT = Path(__file__).resolve().parents[1]
BASES = {  # domain -> (config, overrides every arm of it gets)
    "fmnist": (ROOT / "configs/fmnist_vit_tiny.yaml", []),
    "scenes": (ROOT / "configs/scenes_cpu.yaml", ["meta.model_name=vit_tiny", "optimization.lr=5.0e-4"]),
}
QUIET = ["logging.monitor_every=0", "logging.progress_bar=false", "logging.log_every=20"]
OVERRIDES = {
    "I-JEPA": [],
    "I-JEPA plain": ["meta.variance_weight=0", "meta.covariance_weight=0"],
    "pixel targets": ["meta.target=pixels"],
    "block": ["mask.strategy=block"],
    "rasterized": ["mask.strategy=rasterized"],
    "random": ["mask.strategy=random"],
    # DINO's views come from its own augmentations: the I-JEPA-only settings go back to their defaults.
    # The head's BatchNorm (the DINO code's option): without it DINO's loss never left ln K at these budgets.
    "DINO": ["meta.objective=dino", "meta.dino_head_bn=true", "meta.variance_weight=0", "meta.covariance_weight=0"],
}
CURVE_ARMS = ("I-JEPA", "pixel targets", "DINO")
assert set(OVERRIDES) == set(ARMS)


def schedule(images: int, batch: int, dataset_size: int, warmup_share: float, points: int) -> dict:
    """The optimisation overrides that fit a whole schedule (warmup, cosine, EMA ramp) into
    ``images`` images, and the steps at which the curve's checkpoints are taken."""
    steps = images // batch
    per_epoch = dataset_size // batch
    if steps < points or per_epoch < 1:
        raise SystemExit(f"--images {images} is fewer than {points} steps of {batch} images")
    epochs = math.ceil(steps / per_epoch)
    # int(ipe_scale x epochs x per_epoch) must come out as `steps`: aim half a step above it
    overrides = [
        f"optimization.epochs={epochs}",
        f"optimization.ipe_scale={(steps + 0.5) / (epochs * per_epoch)!r}",
        f"optimization.warmup={warmup_share * steps / per_epoch!r}",
    ]
    marks = sorted({max(1, round(steps * (k + 1) / points)) for k in range(points)})
    return {"steps": steps, "overrides": overrides, "marks": marks}


def dataset_size(domain: str, base) -> int:
    return base.data.scenes_size if domain == "scenes" else 60000


def arm_config(domain: str, arm: str, seed: int, images: int, points: int, runs_dir: Path, overrides=()):
    """(config, schedule plan, run folder) of one arm; ``overrides`` go to every arm (e.g. a GPU's settings)."""
    path, extra = BASES[domain]
    extra = [*extra, *overrides]
    base = load_config(path, extra)
    plan = schedule(
        images,
        base.data.batch_size,
        dataset_size(domain, base),
        base.optimization.warmup / base.optimization.epochs,
        points,
    )
    folder = runs_dir / f"{domain}_{images}" / f"{arm.replace(' ', '_')}_s{seed}"
    cfg = load_config(
        path,
        [*extra, *QUIET, *OVERRIDES[arm], *plan["overrides"], f"meta.seed={seed}", f"logging.folder={folder}"],
    )
    return cfg, plan, folder


def pretrain(domain: str, arm: str, seed: int, args) -> list[dict]:
    """Train in segments up to each curve mark (a resumed run is bitwise the uninterrupted one) and
    keep a copy of the checkpoint at each; returns [{step, images, minutes, checkpoint}]."""
    cfg, plan, folder = arm_config(domain, arm, seed, args.images[domain], args.points, args.runs_dir, args.override)
    marks = plan["marks"] if arm in CURVE_ARMS and seed == 0 else plan["marks"][-1:]
    record_path = folder / "curve.json"
    done = json.loads(record_path.read_text()) if record_path.exists() else {}
    points_out = []
    for step in marks:
        keep = folder / "curve" / f"step_{step:06d}.pt"
        if str(step) not in done or not keep.exists():
            print(f"[claims] {domain} / {arm} / seed {seed}: training to step {step}", flush=True)
            train(cfg, max_steps=step)
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / "checkpoints/latest.pt", keep)
            done[str(step)] = {"minutes": pretrain_seconds(folder) / 60}
            record_path.write_text(json.dumps(done, indent=1))
        points_out.append(
            {
                "step": step,
                "images": step * cfg.data.batch_size,
                "minutes": done[str(step)]["minutes"],
                "checkpoint": keep,
            }
        )
    return points_out


def task_of(data: str) -> str:
    """The metrics' prefix: fmnist, count, dist or dense (seg and depth)."""
    return {"fashion_mnist": "fmnist", "scenes": "dense"}.get(data, data.split(":")[-1])


def evaluate_point(domain: str, arm: str, point: dict, final: bool, baselines: bool, eval_limit: int | None) -> dict:
    """Headline numbers {encoder: {task metric: value}} of one checkpoint; encoder is the arm, and
    with ``baselines`` also 'random init' and 'raw pixels'."""
    rows: dict[str, dict] = {}
    ckpt = point["checkpoint"]
    for data, protocols in (DOMAIN_TASKS if final else CURVE_TASKS)[domain]:
        task = task_of(data)
        out = ckpt.parent.parent / "eval" / f"{task}_step{point['step']:06d}{'' if final else '_curve'}.json"
        if out.exists():
            record = json.loads(out.read_text())
        else:
            print(f"[claims] evaluating {arm} at step {point['step']} on {data} ({', '.join(protocols)})", flush=True)
            record = evaluate(
                ckpt,
                data,
                protocols,
                ("random", "pixels") if baselines else (),
                out=out,
                progress=False,
                train_limit=eval_limit if task != "dense" else None,
            )
        names = {"ijepa": arm, "random": "random init", "pixels": "raw pixels"}
        for encoder, result in record["results"].items():
            for key, value in headline(result).items():
                if key != "rankme":
                    rows.setdefault(names[encoder], {})[f"{task} {key}"] = value
    return rows


def run_arm(domain, arm, seed, args, results: list[dict]) -> None:
    points = pretrain(domain, arm, seed, args)
    for i, point in enumerate(points):
        final = i == len(points) - 1
        baselines = final and arm == "I-JEPA" and seed == 0
        for encoder, metrics in evaluate_point(domain, arm, point, final, baselines, args.eval_limit).items():
            trained = encoder == arm
            results.append(
                {
                    "domain": domain,
                    "arm": encoder,
                    "seed": seed,
                    "final": final,
                    "step": point["step"] if trained else 0,
                    "images": point["images"] if trained else 0,
                    "minutes": round(point["minutes"], 2) if trained else 0.0,
                    "metrics": metrics,
                }
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", default="fmnist,scenes")
    p.add_argument("--arms", default=",".join(OVERRIDES), help="comma-separated, from: " + ", ".join(OVERRIDES))
    p.add_argument("--images", type=int, default=20000, help="images each arm pretrains on, per domain")
    p.add_argument("--scenes-images", type=int, default=None, help="the scenes' budget, if not --images")
    p.add_argument("--points", type=int, default=3, help="checkpoints along the schedule for the efficiency curve")
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds for the claims' own comparisons that their verdict leaves within noise (of --arms)",
    )
    p.add_argument("--eval-limit", type=int, default=None, help="probe on a seeded subset of the training images")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs/claims")
    p.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--figure", type=Path, default=None, help="default docs/claims_curve[_TAG].png")
    p.add_argument("--override", action="append", default=[], help="section.key=value for every arm (repeatable)")
    p.add_argument("--tag", default="", help="a section of its own for another machine's budget, e.g. gpu")
    p.add_argument("--table-only", action="store_true", help="rewrite the section from results.json, train nothing")
    args = p.parse_args()
    domains = [d for d in args.domains.split(",") if d]
    arms = [a for a in args.arms.split(",") if a]
    if args.points < 1 or args.seeds < 1 or args.images < 1 or (args.scenes_images or 1) < 1:
        raise SystemExit("--points, --seeds, --images and --scenes-images must be at least 1")
    if args.md.suffix != ".md" or args.md.is_dir():
        raise SystemExit(f"--md {args.md} is not a markdown file (.md) to write the section into")
    if args.figure is not None and args.figure.suffix != ".png":
        raise SystemExit(f"--figure {args.figure} is not a .png path")
    bad = [d for d in domains if d not in BASES] + [a for a in arms if a not in OVERRIDES]
    if bad or not domains or not arms:
        raise SystemExit(
            f"unknown or no domain or arm: {', '.join(bad) or '(none given)'} "
            f"(domains {', '.join(BASES)}; arms {', '.join(OVERRIDES)})"
        )
    args.images = {"fmnist": args.images, "scenes": args.scenes_images or args.images}
    store = args.runs_dir / "results.json"
    results = json.loads(store.read_text()) if store.exists() else []
    t0 = time.time()
    if not args.table_only:
        for seed_pass in (0, 1):
            todo = (
                [(d, a, 0) for d in domains for a in arms]
                if seed_pass == 0
                else [(d, a, s) for d, a in close_pairs(results, domains) if a in arms for s in range(1, args.seeds)]
            )
            for domain, arm, seed in todo:
                if any(r["domain"] == domain and r["arm"] == arm and r["seed"] == seed and r["final"] for r in results):
                    continue
                fresh: list[dict] = []
                run_arm(domain, arm, seed, args, fresh)
                results = [
                    r
                    for r in results
                    if not (r["domain"] == domain and r["seed"] == seed and r["arm"] in {x["arm"] for x in fresh})
                ] + fresh
                store.parent.mkdir(parents=True, exist_ok=True)
                store.with_suffix(".tmp").write_text(json.dumps(results, indent=1))
                store.with_suffix(".tmp").replace(store)  # a kill mid-write keeps the last whole file
    if not results:
        raise SystemExit(f"no results in {store}: run without --table-only first")
    figure = args.figure or ROOT / f"docs/claims_curve{'_' + args.tag if args.tag else ''}.png"
    write_section(results, args.md, figure, machine(), args.tag)
    print(f"[claims] {len(results)} rows; {(time.time() - t0) / 60:.1f} min this call; section written to {args.md}")


if __name__ == "__main__":
    main()
