"""One treatment of unreadable image files everywhere a dataset is read: evaluation (features and
the pixel baseline), the training monitor, the report and the pictures skip them (with their
labels), count them and name them; a split with no readable image is a one-line error."""

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import labelled_folder, tiny_config
from openjepa.cli import main
from openjepa.data import DataError, ImageFolder
from openjepa.evaluate import extract
from openjepa.models.vit import VisionTransformer
from openjepa.pretrain import train
from openjepa.viz import pick_images, sample_images


def truncated_jpeg(path):
    """The first half of a JPEG file: its header reads, its pixels do not."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def add_broken(folder, stem="5"):
    """A zero-byte .png, a truncated .jpg and a text file named .jpg in ``folder`` (named to sort
    among the readable images); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    empty, text = folder / f"{stem}a.png", folder / f"{stem}c.jpg"
    empty.write_bytes(b"")
    text.write_text("this is not an image\n")
    return [empty, truncated_jpeg(folder / f"{stem}b.jpg"), text]


@pytest.fixture
def openjepa_log(caplog, monkeypatch):
    """caplog of the "openjepa" logger (training turns its propagation off)."""
    monkeypatch.setattr(logging.getLogger("openjepa"), "propagate", True)
    caplog.set_level(logging.INFO, logger="openjepa")
    return caplog


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """A run trained (monitor and collapse probe on) on a folder of 48 readable images and 4
    unreadable ones: 3 in train/top/, 1 in val/bottom/ (``labelled_folder`` layout, so it is also
    evaluation data)."""
    root = tmp_path_factory.mktemp("broken")
    images = labelled_folder(root / "images", channels=3)
    bad_train, bad_test = add_broken(images / "train/top"), [truncated_jpeg(images / "val/bottom/5b.jpg")]
    cfg = tiny_config(
        root / "run",
        data={"dataset": "folder", "root_path": str(images)},
        logging={"monitor_every": 1, "monitor_images": 64, "collapse_every": 2, "collapse_images": 64},
    )
    train(cfg, max_steps=4)
    return root / "run", images, bad_train, bad_test


def test_extract_and_pixels_leave_out_unreadable_images_with_their_labels(tmp_path):
    """Features and labels of a folder with broken files are those of the same folder without them."""
    clean = labelled_folder(tmp_path / "clean")
    broken = labelled_folder(tmp_path / "broken")
    bad = add_broken(broken / "train/bottom")  # class 0, sorted among its readable files
    encoder = VisionTransformer(16, 4, 1, embed_dim=32, depth=2, num_heads=4).eval()
    encoder.mean, encoder.std = [0.5], [0.25]
    want = extract(encoder, ImageFolder(clean / "train", 1), batch_size=5, progress=False)
    got = extract(encoder, ImageFolder(broken / "train", 1), batch_size=5, progress=False)
    assert got.labels.tolist() == want.labels.tolist() == [0] * 12 + [1] * 12
    torch.testing.assert_close(got.pooled, want.pooled)
    assert sorted(got.skipped) == sorted(map(str, bad)) and want.skipped == []
    from openjepa.evaluate.features import pixel_features

    (x, y), (x0, y0) = (
        pixel_features(ImageFolder(broken / "train", 1), (16, 16), 5),
        pixel_features(ImageFolder(clean / "train", 1), (16, 16), 5),
    )
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_eval_skips_unreadable_images_and_names_them_in_the_result(broken_run, tmp_path, capsys, openjepa_log):
    run, images, bad_train, bad_test = broken_run
    out, cache = tmp_path / "r.json", tmp_path / "cache"
    argv = [
        "eval",
        str(run / "checkpoints/latest.pt"),
        "--data",
        str(images),
        "--protocol",
        "knn,linear",
        "--linear-steps",
        "20",
        "--baselines",
        "pixels",
        "--no-progress",
        "--precision",
        "fp32",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
    ]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["train_size"] == 24 and record["test_size"] == 24  # the readable ones
    assert record["skipped"]["train"]["count"] == 3 and record["skipped"]["test"]["count"] == 1
    assert sorted(record["skipped"]["train"]["paths"]) == sorted(map(str, bad_train))
    assert record["skipped"]["test"]["paths"] == [str(bad_test[0])]
    assert record["results"]["pixels"]["linear"]["test_acc"] == 1.0  # labels still match their images
    assert record["results"]["pixels"]["linear"]["train_size"] + record["results"]["pixels"]["linear"]["val_size"] == 24
    assert "3 training and 1 test image(s) cannot be read" in capsys.readouterr().out
    assert "skipped 3 of 27" in openjepa_log.text and all(p.name in openjepa_log.text for p in bad_train)
    # a rerun reads the features from the cache, which remembers what was skipped
    caches = {p: p.stat().st_mtime_ns for p in cache.glob("features_*.pt")}
    assert len(caches) == 2
    openjepa_log.clear()
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert {p: p.stat().st_mtime_ns for p in cache.glob("features_*.pt")} == caches  # not recomputed
    assert again["skipped"] == record["skipped"] and again["train_size"] == 24
    assert "skipped 3 of 27" in openjepa_log.text


def test_a_split_with_no_readable_image_is_a_one_line_error_naming_it(broken_run, tmp_path, capsys):
    run, _, _, _ = broken_run
    data = labelled_folder(tmp_path / "data", n_per_class=3)
    for name in ("top", "bottom"):
        for path in (data / "val" / name).iterdir():
            path.unlink()
        add_broken(data / "val" / name)
    assert (
        main(
            [
                "eval",
                str(run / "checkpoints/latest.pt"),
                "--data",
                str(data),
                "--protocol",
                "knn",
                "--baselines",
                "",
                "--no-progress",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"no image of {data / 'val'} can be read: 6 unreadable" in err
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(DataError, match="can be read"):
        pick_images(ImageFolder(data / "val"), 4)


def test_report_of_a_run_on_a_folder_with_unreadable_images(broken_run, openjepa_log):
    run, images, bad_train, bad_test = broken_run
    # training went on: the monitor and the collapse probe measured the readable images, and said which were not
    monitor = (run / "monitor.csv").read_text().splitlines()
    assert len(monitor) >= 2 and monitor[1].split(",")[2] not in ("", "nan")  # a kNN accuracy
    train_log = (run / "train.log").read_text()
    assert "monitor: skipped 4 of 52" in train_log and "collapse probe: skipped 4 of 52" in train_log
    assert all(p.name in train_log for p in bad_train)
    assert main(["report", str(run), "--n", "4"]) == 0
    text = (run / "report.html").read_text()
    assert "Not available" not in text and text.count("<img src='data:image/png") == 4  # curves, masks, features, bank
    # the report read every image (4 shown, the rest its bank): the 4 unreadable ones counted, 3 named
    assert "skipped 4 of 52" in openjepa_log.text and "and 1 more" in openjepa_log.text
    assert sum(str(path) in openjepa_log.text for path in bad_train + bad_test) == 3
    from openjepa.config import load_config

    assert len(sample_images(load_config(run / "config.yaml"), 1000)) == 48  # every readable image, no other


def test_viz_features_and_masks_on_a_folder_with_unreadable_images(broken_run, tmp_path, openjepa_log):
    run, _, _, _ = broken_run
    few = tmp_path / "few"  # 4 readable images of another size, 3 unreadable files among them
    few.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(few / f"{i}.png")
    bad = add_broken(few, stem="2")
    out = tmp_path / "f.png"
    assert (
        main(
            [
                "viz",
                "features",
                str(run / "checkpoints/latest.pt"),
                f"data.root_path={few}",
                "--out",
                str(out),
                "--n",
                "8",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (4 * (64 + 4), 3 * (64 + 4))  # the 4 readable images, no more
    assert all(str(p) in openjepa_log.text for p in bad) and "skipped 3 of 7" in openjepa_log.text
    from openjepa.config import load_config

    cfg = load_config(run / "config.yaml")
    cfg.data.root_path = str(few)
    cfg.save(tmp_path / "c.yaml")
    assert main(["viz", "masks", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "m.png"), "--n", "8"]) == 0
    assert Image.open(tmp_path / "m.png").size[0] == 90 + 4 * (64 + 4)
