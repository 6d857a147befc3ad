"""The spatial and dense evaluation: the scenes as labelled data (count, dist) and as dense pairs,
and ``openjepa eval`` running the dense protocols with their baselines."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from openjepa.cli import main
from openjepa.data import DataError, load_eval_data, scene_sets
from openjepa.evaluate import dense
from openjepa.pretrain import train


@pytest.fixture(scope="module")
def scenes_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("scenes") / "run"
    train(tiny_config(run, data={"dataset": "scenes", "scenes_size": 64, "crop_size": 16}), max_steps=2)
    return run / "checkpoints" / "latest.pt"


@pytest.fixture
def small_scenes(monkeypatch):
    """Few scenes, and short dense probes: these tests check the plumbing, not the numbers."""
    monkeypatch.setattr(scene_sets, "EVAL_SIZES", (120, 60))
    monkeypatch.setattr(scene_sets, "DENSE_SIZES", (40, 20))
    monkeypatch.setattr(dense, "EPOCHS", 2)
    monkeypatch.setattr(dense, "MIN_STEPS", 20)


def test_scene_tasks_are_named_in_the_data_argument():
    assert scene_sets.scenes_task("scenes:count") == "count" and scene_sets.scenes_task("scenes") == "none"
    assert scene_sets.scenes_task("fashion_mnist") is None and scene_sets.scenes_task("/data/scenes") is None
    with pytest.raises(DataError, match="count or dist .* got 'depth'"):
        scene_sets.scenes_task("scenes:depth")


def test_evaluation_scenes_are_labelled_and_the_test_scenes_are_not_the_training_ones(small_scenes):
    train_set, test_set = load_eval_data("scenes:dist", 1, image_size=24)
    assert (len(train_set), len(test_set)) == (120, 60) and train_set[0][0].shape == (1, 24, 24)
    assert set(train_set.labels) == set(range(6)) and test_set.first == scene_sets.TEST_FIRST
    assert not any(torch.equal(test_set[i][0], train_set[i][0]) for i in range(5))
    with pytest.raises(DataError, match="scenes:count or scenes:dist"):
        load_eval_data("scenes", 3)


def test_dense_scene_pairs_carry_shape_classes_and_depth(small_scenes):
    train_set, _ = scene_sets.scene_dense_splits(32)
    image, target = train_set[3]
    scene = train_set.scenes.scene(3)
    assert image.shape == (3, 32, 32) and target["seg"].shape == target["depth"].shape == (32, 32)
    objects = torch.from_numpy(scene.instance) > 0
    assert torch.equal(target["seg"] > 0, objects)  # every object pixel has its shape's class, the rest 0
    assert set(target["seg"].unique().tolist()) <= {0, 1, 2, 3} and train_set.num_classes == 4
    near = min(o.z for o in scene.objects)
    assert target["depth"][objects].min() == pytest.approx(near)


def test_eval_runs_the_count_probe_on_scenes_with_its_baselines(scenes_checkpoint, small_scenes, tmp_path):
    out = tmp_path / "count.json"
    args = ["eval", str(scenes_checkpoint), "--data", "scenes:count", "--protocol", "linear,knn"]
    assert main([*args, "--no-progress", "--linear-steps", "30", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["train_size"] == 120 and record["test_size"] == 60 and record["dataset"] == "scenes:count"
    assert set(record["results"]) == {"ijepa", "random", "pixels"}
    assert all(0 <= r["linear"]["test_acc"] <= 1 for r in record["results"].values())


def test_eval_runs_the_dense_probes_on_scenes_and_draws_their_predictions(scenes_checkpoint, small_scenes, tmp_path):
    out = tmp_path / "dense.json"
    args = ["eval", str(scenes_checkpoint), "--data", "scenes", "--protocol", "seg,depth", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    for name in ("ijepa", "random", "pixels"):
        seg, depth = record["results"][name]["seg"], record["results"][name]["depth"]
        assert 0 <= seg["miou"] <= 1 and 0 <= depth["delta1"] <= 1 and depth["rmse"] > 0
        assert "predictions" not in seg and "predictions" not in depth  # pictures, not JSON
    picture = Image.open(record["dense_figure"])
    assert picture.size == (3 * (5 * 16 + 4 * 2), 3 * 4 * (16 + 2))  # 4 rows: image, seg x2, depth x2
    assert main([*args[:5], "linear", "--out", str(tmp_path / "x.json")]) == 2  # classification needs a task


def test_the_dense_probes_read_a_users_dense_folder(scenes_checkpoint, small_scenes, tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            (tmp_path / "dense" / split / sub).mkdir(parents=True)
        for i in range(12):
            bright = np.zeros((16, 16), bool)
            bright[(slice(0, 8) if i % 2 else slice(8, 16))] = True  # the top or the bottom half
            img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8) + 150 * bright[..., None].astype(np.uint8)
            label = np.where(bright, 2, 1).astype(np.uint8)  # ADE20K's: 0 = other, classes from 1
            Image.fromarray(img).save(tmp_path / "dense" / split / "images" / f"{i}.png")
            Image.fromarray(label).save(tmp_path / "dense" / split / "labels" / f"{i}.png")
    out = tmp_path / "folder.json"
    args = ["eval", str(scenes_checkpoint), "--data", str(tmp_path / "dense"), "--protocol", "seg", "--no-progress"]
    assert main([*args, "--baselines", "pixels", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["results"]["pixels"]["seg"]["miou"] > 0.75  # the label is the brightness of the patch's pixels
    assert main([*args[:5], "depth", "--out", str(tmp_path / "d.json")]) == 2  # no depth/ in this folder


def test_the_run_report_shows_the_dense_predictions(scenes_checkpoint, small_scenes):
    from openjepa.viz import write_report

    args = ["eval", str(scenes_checkpoint), "--data", "scenes", "--protocol", "depth", "--baselines", ""]
    assert main([*args, "--no-progress"]) == 0  # the result beside the run's checkpoints: RUN/eval/
    page = write_report(scenes_checkpoint.parents[1], n_images=2).read_text()
    assert "alt='dense predictions' src='data:image/png;base64," in page and "depth RMSE" in page
