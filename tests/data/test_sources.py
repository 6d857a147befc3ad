"""Streamed tar shards (webdataset) and local Hugging Face datasets as training sources (issue 14)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from openjepa.checkpoint import load_checkpoint
from openjepa.cli import main
from openjepa.config import ConfigError
from openjepa.data import DataError, PretrainTransform, build_dataset
from openjepa.data.shards import ShardBatches
from openjepa.pretrain import train

SHARDS, PER_SHARD = 8, 8


def png(value: int, size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards of 8 uniform grey images; sample n has grey level 3n, so a crop tells which it is."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("shards")
    for s in range(SHARDS):
        with wds.TarWriter(str(root / f"train-{s:04d}.tar")) as w:
            for i in range(PER_SHARD):
                n = s * PER_SHARD + i
                w.write({"__key__": f"{n:05d}", "png": png(3 * n), "cls": str(n % 2)})
    return root


def shard_config(root, folder, **data):
    return tiny_config(
        folder,
        data={
            "dataset": "webdataset",
            "root_path": str(root / "train-{0000..0007}.tar"),
            "samples_per_epoch": SHARDS * PER_SHARD,
            "in_chans": 1,
            "mean": [0.0],
            "std": [1.0],
            "shuffle_buffer": 5,
            **data,
        },
    )


def sample_ids(batch_items) -> list[int]:
    return [int(round(float(img.mean()) * 255 / 3)) for img, _ in batch_items]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (1, 2)])
def test_every_sample_once_per_epoch_over_processes_and_workers(shards, world, workers, tmp_path):
    cfg = shard_config(shards, tmp_path)
    source, transform = build_dataset(cfg.data), PretrainTransform.from_config(cfg.data)
    per_epoch = SHARDS * PER_SHARD // (cfg.data.batch_size * world)
    epochs = {}
    for rank in range(world):
        stream = ShardBatches(
            source,
            transform,
            cfg.data.batch_size,
            per_epoch,
            0,
            2 * per_epoch,
            seed=0,
            rank=rank,
            world_size=world,
            workers=workers,
        )
        loader = torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=lambda x: x, num_workers=workers)
        for b, items in enumerate(loader):
            assert {batch for _, batch in items} == {b}  # numbered in the order the loader gives them
            epochs.setdefault(b // per_epoch, []).extend(sample_ids(items))
    for ids in epochs.values():
        assert sorted(ids) == list(range(SHARDS * PER_SHARD))
    assert epochs[0] != epochs[1]  # a new order each epoch


def test_a_stopped_run_over_shards_resumes_exactly(shards, tmp_path):
    for workers in (0, 2):
        cfg = shard_config(shards, tmp_path / f"stopped{workers}", num_workers=workers)
        train(cfg, max_steps=3)  # stops inside epoch 0 (4 steps per epoch)
        train(cfg, max_steps=6)  # resumes there, crosses into epoch 1
        straight = shard_config(shards, tmp_path / f"straight{workers}", num_workers=workers)
        train(straight, max_steps=6)
        a = load_checkpoint(tmp_path / f"stopped{workers}/checkpoints/latest.pt")
        b = load_checkpoint(tmp_path / f"straight{workers}/checkpoints/latest.pt")
        assert a["step"] == b["step"] == 6
        assert all(torch.equal(v, b["target_encoder"][k]) for k, v in a["target_encoder"].items())


def test_a_broken_sample_or_shard_is_skipped_and_counted(shards, tmp_path):
    import csv

    import webdataset as wds

    bad = tmp_path / "bad"
    bad.mkdir()
    for s in range(2):
        with wds.TarWriter(str(bad / f"b-{s}.tar")) as w:
            for i in range(16):
                w.write({"__key__": f"{s}_{i}", "png": b"not a png" if (s, i) == (0, 3) else png(i), "cls": "0"})
    (bad / "b-2.tar").write_bytes((bad / "b-0.tar").read_bytes()[:700])  # truncated: its samples are lost
    cfg = tiny_config(
        tmp_path / "run",
        data={
            "dataset": "webdataset",
            "root_path": str(bad / "b-{0..2}.tar"),
            "samples_per_epoch": 32,
            "in_chans": 1,
            "mean": [0.5],
            "std": [0.5],
            "shuffle_buffer": 4,
        },
        optimization={"epochs": 1},
        logging={"log_every": 1},
    )
    train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "run/log.csv")))
    assert int(rows[-1]["skipped_images"]) >= 1
    assert "b-0.tar:0_3" in (tmp_path / "run/train.log").read_text()


def test_shard_configs_are_checked_before_any_work(shards, tmp_path):
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        shard_config(shards, tmp_path, samples_per_epoch=0)
    cfg = shard_config(shards, tmp_path, root_path=str(shards / "train-{0000..0009}.tar"))
    with pytest.raises(DataError, match="2 of 10 shards not found, e.g. .*train-0008.tar"):
        build_dataset(cfg.data)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)

    def split(n):
        images, labels = [], []
        for i in range(n):
            img = rng.integers(0, 60, (16, 16), dtype=np.uint8)
            img[:8] += 150 * (i % 2)
            images.append(Image.fromarray(img))
            labels.append(i % 2)
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "light"])})
        return datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)

    datasets.DatasetDict({"train": split(40), "test": split(20)}).save_to_disk(str(root / "ds"))
    return root / "ds"


def test_a_hugging_face_folder_trains_and_its_items_match_the_images(hf_folder, tmp_path):
    cfg = tiny_config(
        tmp_path / "run",
        data={"dataset": "huggingface", "root_path": str(hf_folder), "in_chans": 1, "mean": [0.5], "std": [0.5]},
    )
    ds = build_dataset(cfg.data)
    assert len(ds) == 40 and ds.classes == ["dark", "light"] and ds.image_key == "img"
    img, label = ds[1]
    assert img.shape == (1, 16, 16) and label == 1 and float(img[0, :8].mean()) > float(img[0, 8:].mean()) + 0.3
    run = train(cfg, max_steps=2)
    assert load_checkpoint(run / "checkpoints/latest.pt")["step"] == 2
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(run / "checkpoints/latest.pt"),
                "--data",
                str(hf_folder),
                "--protocol",
                "knn,linear",
                "--linear-steps",
                "50",
                "--baselines",
                "pixels",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    assert (record["train_size"], record["test_size"]) == (40, 20)
    assert record["results"]["pixels"]["linear"]["test_acc"] >= 0.9  # labels and images stay together
    assert main(["report", str(run), "--n", "2"]) == 0 and "Not available" not in (run / "report.html").read_text()
    cfg.data.split = "validation"
    with pytest.raises(DataError, match="holds the splits train, test, not 'validation'"):
        build_dataset(cfg.data)


def test_the_folder_index_is_cached_and_follows_changes(tmp_path, monkeypatch):
    from openjepa.data import ImageFolder, index

    root = tmp_path / "imgs"
    for c in ("b_cls", "a_cls", "a cls-2"):
        (root / c / "sub").mkdir(parents=True)
        for name in ("x.png", "Y.JPG", "sub/z.png", "notes.txt"):
            (root / c / name).write_bytes(png(10) if name != "notes.txt" else b"text")
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    (root / "a_cls" / "up").symlink_to("..")  # a loop: not followed, as rglob does not
    ds = ImageFolder(root)
    assert list(ds.files) == expected and ds.classes == ["a cls-2", "a_cls", "b_cls"]
    assert [int(label) for label in ds.labels] == [ds.classes.index(p.relative_to(root).parts[0]) for p in expected]

    def no_scan(*args):
        raise AssertionError("scanned again although nothing changed")

    real_scan = index.scan
    monkeypatch.setattr(index, "scan", no_scan)
    again = ImageFolder(root)  # from the cached index
    assert list(again.files) == expected and list(again.labels) == list(ds.labels)
    (root / "a_cls" / "sub" / "new.png").write_bytes(png(20))  # changes that directory's mtime
    monkeypatch.setattr(index, "scan", real_scan)
    assert len(ImageFolder(root)) == len(expected) + 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        ImageFolder(tmp_path / "empty")


def test_shards_train_on_two_processes(shards, tmp_path):
    """torchrun, 2 gloo processes over the shards: each process streams its own slots (the loader-level
    test above checks that the two together read every sample once)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    cfg = shard_config(shards, tmp_path / "two", batch_size=8)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "openjepa.cli",
            "train",
            str(tmp_path / "two.yaml"),
            "--max-steps",
            "5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "two/train.log").read_text()
    assert "64 images, 4 steps/epoch of 16 images (8 per process x 2 processes" in log
    assert load_checkpoint(tmp_path / "two/checkpoints/latest.pt")["step"] == 5


def test_parquet_files_of_one_split_are_read(hf_folder, tmp_path):
    """The Hub's layout: data/train-*.parquet beside data/test-*.parquet; data.split picks the files."""
    import datasets

    from openjepa.data.hf import HFImages

    for split in ("train", "test"):
        ds = datasets.load_from_disk(str(hf_folder))[split]
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
    train_rows, test_rows = (
        HFImages(tmp_path / "data", "train", in_chans=1),
        HFImages(tmp_path / "data", "test", in_chans=1),
    )
    assert (len(train_rows), len(test_rows)) == (40, 20)
    assert train_rows[3][1] == 1 and float(train_rows[3][0][0, :8].mean()) > float(train_rows[3][0][0, 8:].mean())
    (tmp_path / "bad.arrow").write_bytes(b"not arrow")
    with pytest.raises(DataError, match="bad.arrow cannot be read as a dataset file"):
        HFImages(tmp_path / "bad.arrow")


def test_a_split_that_no_file_names_is_refused_with_the_splits_there_are(hf_folder, tmp_path):
    import datasets

    from openjepa.data.hf import HFImages

    for split in ("train", "test"):
        ds = datasets.load_from_disk(str(hf_folder))[split]
        ds.to_parquet(str(tmp_path / "hub" / f"{split}-00000-of-00001.parquet"))
        ds.to_parquet(str(tmp_path / "plain" / f"part{split}.parquet"))
    with pytest.raises(
        DataError, match="has no files of the split 'validation' .data.split.; its files are of the splits test, train"
    ):
        HFImages(tmp_path / "hub", "validation", in_chans=1)
    with pytest.raises(DataError, match="has no files of the split 'test' .data.split.: its file names name no split"):
        HFImages(tmp_path / "plain", "test", in_chans=1)
    assert len(HFImages(tmp_path / "plain", "train", in_chans=1)) == 60  # unnamed files are the train split
