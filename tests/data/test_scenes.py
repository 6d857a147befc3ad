"""The procedural scenes (data/scenes.py): determinism, labels that agree with the picture, the
dense maps, one scene at two sizes, and bad input. Fast: a few hundred scenes at 64 px."""

import pickle

import numpy as np
import pytest
import torch

from openjepa.data import DataError
from openjepa.data.scene_draw import DEPTH_FAR, HORIZON, floor_depth, pixel_centres
from openjepa.data.scenes import COLORS, DIST_EDGES, SHAPES, SceneDataset, render_scene, scene_layout
from openjepa.errors import BadInput

SCENES = range(60)


@pytest.fixture(scope="module")
def scenes64():
    return [render_scene(0, i, 64) for i in SCENES]


def test_items_are_images_in_unit_range_with_int_labels():
    for task, classes in (("count", 8), ("dist", 6), ("none", 0)):
        ds = SceneDataset(4, image_size=32, seed=1, task=task)
        image, label = ds[3]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert isinstance(label, int) and len(ds.classes) == classes
        assert label == -1 if task == "none" else 0 <= label < classes


def test_same_seed_and_index_same_pixels_else_different():
    a, b = SceneDataset(8, seed=3), SceneDataset(8, seed=3)
    assert torch.equal(a[5][0], b[5][0])
    assert torch.equal(a[5][0], a[-3][0])
    assert not torch.equal(a[5][0], a[6][0])
    assert not torch.equal(a[5][0], SceneDataset(8, seed=4)[5][0])
    assert np.array_equal(a.scene(5).image, (a[5][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_every_object_is_visible_so_the_count_is_in_the_picture(scenes64):
    counts = set()
    for scene in scenes64:
        pixels = np.bincount(scene.instance.ravel(), minlength=len(scene.objects) + 1)
        assert len(pixels) == len(scene.objects) + 1  # no id beyond the objects
        assert pixels[1:].min() >= 2, f"an object shows {pixels[1:].min()} pixels"
        counts.add(len(scene.objects))
    assert counts == set(range(3, 11))


def test_labels_without_drawing_match_the_items():
    for task in ("count", "dist"):
        ds = SceneDataset(12, seed=2, task=task)
        assert ds.labels == [ds[i][1] for i in range(12)]
    assert SceneDataset(5, task="none").labels == [-1] * 5
    counts = SceneDataset(300, task="count").labels
    assert [n + 3 for n in counts[:20]] == [len(scene_layout(0, i).objects) for i in range(20)]
    assert set(counts) == set(range(8)) and set(SceneDataset(300, task="dist").labels) == set(range(6))


def test_nearest_object_depth_falls_in_the_dist_bin(scenes64):
    ds = SceneDataset(len(SCENES), task="dist")
    for i, scene in enumerate(scenes64):
        nearest = min(o.z for o in scene.objects)
        assert nearest == scene.objects[0].z  # listed nearest first
        assert scene.depth[scene.instance > 0].min() == np.float32(nearest)
        label = ds.labels[i]
        assert DIST_EDGES[label] <= nearest < DIST_EDGES[label + 1]


def test_depth_is_the_objects_z_on_their_pixels_and_rises_toward_the_horizon(scenes64):
    for scene in scenes64[:20]:
        for k, obj in enumerate(scene.objects, 1):
            assert np.all(scene.depth[scene.instance == k] == np.float32(obj.z))
        rows = np.broadcast_to(floor_depth(64)[:, None], scene.depth.shape)
        assert np.array_equal(scene.depth[scene.instance == 0], rows[scene.instance == 0])
    depth, v = floor_depth(224), pixel_centres(224)
    floor = depth[v > HORIZON]
    assert np.all(depth[v < HORIZON] == DEPTH_FAR) and floor.max() == DEPTH_FAR
    assert np.all(np.diff(floor) <= 0)  # down the image, nearer
    unclipped = floor[floor < DEPTH_FAR]
    assert np.all(np.diff(unclipped) < 0) and 2.0 < unclipped[-1] < 4.0  # the bottom row is nearer than any object


def test_where_outlines_overlap_the_nearer_object_is_on_top(scenes64):
    """Each pixel holds the nearest object whose outline covers it (the painter's algorithm)."""
    overlaps = 0
    centres = pixel_centres(64)
    for i, scene in enumerate(scenes64):
        shapes = scene_layout(0, i).shapes
        covers = np.stack([s.inside(centres[None, :], centres[:, None]) for s in shapes])  # nearest first
        expected = np.where(covers.any(0), covers.argmax(0) + 1, 0)
        assert np.array_equal(scene.instance, expected)
        overlaps += int((covers.sum(0) > 1).sum())
    assert overlaps > 100  # the scenes tested do occlude


def test_one_scene_at_64_and_224_pixels():
    for i in range(6):
        small, large = render_scene(0, i, 64), render_scene(0, i, 224)
        assert small.objects == large.objects
        shrunk = (
            torch.nn.functional.interpolate(
                torch.from_numpy(large.image).permute(2, 0, 1)[None].float(), size=(64, 64), mode="area"
            )[0]
            .permute(1, 2, 0)
            .numpy()
        )
        assert np.abs(shrunk - small.image).mean() < 4.0  # of 255: edges sampled apart
        picked = large.instance[(np.arange(64) * 3.5 + 1.75).astype(int)][:, (np.arange(64) * 3.5 + 1.75).astype(int)]
        assert (picked == small.instance).mean() > 0.97


def test_segmentation_by_shape_and_by_colour(scenes64):
    scene = scenes64[7]
    shape, colour = scene.segmentation("shape"), scene.segmentation("color")
    assert shape.dtype == np.uint8 and np.array_equal(shape, scene.seg)
    assert np.array_equal(shape == 0, scene.instance == 0) and np.array_equal(colour == 0, scene.instance == 0)
    for k, obj in enumerate(scene.objects, 1):
        assert np.all(shape[scene.instance == k] == SHAPES.index(obj.shape) + 1)
        assert np.all(colour[scene.instance == k] == COLORS.index(obj.color) + 1)
    ds = SceneDataset(8)
    assert torch.equal(ds.dense(7, "color"), torch.from_numpy(colour))
    assert ds.dense(7, "depth").dtype == torch.float32 and ds.dense(7, "instance").shape == (64, 64)


def test_light_and_attributes_vary():
    scenes = [scene_layout(0, i) for i in range(40)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES) and {o.color for o in objects} == set(COLORS)
    assert {o.size for o in objects} == {"small", "large"} and {o.material for o in objects} == {"matte", "shiny"}
    assert all(4.0 <= o.z <= 16.0 and 0.0 < o.screen[0] < 1.0 for o in objects)
    assert len({s.light.direction for s in scenes}) == 40


def test_dataset_pickles_for_loader_workers():
    ds = SceneDataset(6, image_size=16, seed=9, task="dist")
    _ = ds.labels
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[4][0], ds[4][0]) and copy.labels == ds.labels


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"size": 0}, "size must be a whole number >= 1, got 0"),
        ({"size": 2.5}, "got 2.5"),
        ({"size": 4, "image_size": 7}, "image_size must be a whole number >= 8, got 7"),
        ({"size": 4, "task": "colour"}, "got 'colour'"),
        ({"size": 4, "seed": "x"}, "seed must be a whole number, got 'x'"),
    ],
)
def test_bad_input_names_the_value(kwargs, named):
    with pytest.raises(DataError, match=named) as caught:
        SceneDataset(**kwargs)
    assert isinstance(caught.value, BadInput) and isinstance(caught.value, ValueError)


def test_bad_dense_kind_and_index():
    ds = SceneDataset(3)
    with pytest.raises(DataError, match="got 'normals'"):
        ds.dense(0, "normals")
    with pytest.raises(DataError, match="got 'size'"):
        ds.scene(0).segmentation("size")
    with pytest.raises(IndexError, match="scene 3 out of range for 3 scenes"):
        ds[3]
