"""The input pipeline's images/s from each kind of source, on the same generated JPEGs (issue 14):
a folder, tar shards (webdataset) and a Hugging Face dataset (save_to_disk, images embedded), each
timed by ``openjepa.bench.bench_loader`` (read, decode, random resized crop, normalise, masks; the
training loop's loader) at batch 64 and 224 px.

    python bench/loader_sources.py --root /tmp/loader_sources --n 10000 --workers 0,2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_sources(root: Path, n: int, shards: int) -> dict[str, list[str]]:
    """The folder (made by make_jpegs.py), the shards and the datasets folder; kept when present."""
    folder = root / "folder"
    subprocess.run([sys.executable, str(ROOT / "bench/make_jpegs.py"), str(folder), "--n", str(n)], check=True)
    files = sorted(folder.glob("*.jpg"))[:n]
    shard_dir = root / "shards"
    if not (shard_dir / f"train-{shards - 1:04d}.tar").exists():
        import webdataset as wds

        shard_dir.mkdir(parents=True, exist_ok=True)
        per = (len(files) + shards - 1) // shards
        for s in range(shards):
            with wds.TarWriter(str(shard_dir / f"train-{s:04d}.tar")) as w:
                for path in files[s * per : (s + 1) * per]:
                    w.write({"__key__": path.stem, "jpg": path.read_bytes(), "cls": "0"})
    hf_dir = root / "hf"
    if not hf_dir.exists():
        import datasets

        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        ds = datasets.Dataset.from_dict(
            {"image": [str(p) for p in files], "label": [0] * len(files)}, features=features
        )
        ds = ds.cast_column("image", datasets.Image(decode=False)).map(
            lambda row: {"image": {"bytes": Path(row["image"]["path"]).read_bytes(), "path": None}}
        )
        ds.save_to_disk(str(hf_dir))
    return {
        "folder": ["data.dataset=folder", f"data.root_path={folder}"],
        "webdataset": [
            "data.dataset=webdataset",
            f"data.root_path={shard_dir}/train-{{0000..{shards - 1:04d}}}.tar",
            f"data.samples_per_epoch={len(files)}",
        ],
        "huggingface": ["data.dataset=huggingface", f"data.root_path={hf_dir}"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/loader_sources"))
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="each source timed this many times, in turn")
    args = p.parse_args()
    sources = make_sources(args.root, args.n, args.shards)
    from openjepa.bench import bench_loader
    from openjepa.config import load_config

    workers = tuple(int(w) for w in args.workers.split(","))
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    for round_ in range(args.rounds):  # alternating sources: the machine's speed drifts
        for name, overrides in sources.items():
            cfg = load_config(
                ROOT / "configs/vit_b16_in1k_ep600.yaml",
                [*overrides, "data.batch_size=64", "data.image_folder=", "meta.device=cpu"],
            )
            t0 = time.perf_counter()
            result = bench_loader(cfg, batches=args.batches, workers=workers)
            print(
                json.dumps(
                    {
                        "source": name,
                        "round": round_,
                        "images": result["images"],
                        "img_per_s": result["img_per_s"],
                        "setup_and_run_s": round(time.perf_counter() - t0, 1),
                        "cpu": cpu,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
