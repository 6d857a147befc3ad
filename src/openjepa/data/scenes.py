"""Procedural CLEVR-like scenes, drawn on the fly from (seed, index): no files. A source of images
for pretraining and of labels for the probes: VTAB's two CLEVR tasks, and dense targets.

The scene. A floor under perspective with a horizon (sky above; the floor fading into haze with
distance, a little brighter toward the lamp), lit by a lamp whose direction, intensity and ambient
share change per image; 3 to 10 objects (uniform), each a sphere, cube or cylinder, in one of
CLEVR's eight colours, small or large (size radius 0.5 or 0.9 world units), matte or shiny (a
specular highlight), with a soft shadow, standing on the floor at lateral x and depth z in [4, 16].
The camera is a pinhole 2.85 units up with a level axis, so an object's size on screen goes as 1/z
and its base rises toward the horizon as z grows (``scene_draw.py`` holds the camera and the
drawing). Footprints never overlap (objects never intersect); an object that shows less than 40%
of its outline (cut by the image's edge or hidden by nearer objects, probed on an 8x8 grid in
continuous coordinates) is moved, so every object is visible and the count in the picture is the
label (over 10,000 scenes at 64 px the least visible object kept 2 pixels, 3 at the 0.1% quantile;
500 scenes at 224 px: 50). Below 64 px that is not promised: a small far object may fall between
pixel centres (at 32 px in 0.4% of 2,000 scenes; at 48 px in none). The same (seed, index) is the
same scene at any image size (>= 8).

Conventions. ``objects`` lists the objects nearest first (by z); the instance map holds k for the
k-th of them (1-based), 0 for floor and sky. The depth map is z in world units: an object's pixels
its z (the depth of its footprint's centre, the same z that orders the painting: a nearer object
covers a farther one), the floor the depth under the camera, the sky (and the floor near the
horizon, past it) ``DEPTH_FAR`` = 50. Segmentation ``shape``: 0 background (floor and sky),
1 sphere, 2 cube, 3 cylinder; ``color``: 0 background, then 1..8 in ``COLORS`` order.

Tasks. ``count``: number of objects - 3 (8 classes for 3..10; uniform by construction, 12.1-13.0%
each over 20,000 scenes of seeds 0 and 1). ``dist``: the nearest object's z in 6 bins, ``DIST_EDGES``.
VTAB bins CLEVR's distance at [0, 8, 8.5, 9, 9.5, 10, 100]; our units differ, so the edges are the
sextiles of the nearest z over 20,000 scenes: [4, 4.28, 4.61, 5.03, 5.61, 6.68, 16]. Class shares
over 20,000 scenes, seed 0: 16.3 / 16.5 / 16.5 / 16.9 / 17.5 / 16.4 %; seed 1: 16.1 / 16.2 / 17.0 /
17.2 / 17.0 / 16.5 %. ``none``: label -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .images import DataError, to_channels
from .scene_draw import FOCAL, Cube, Cylinder, Lighting, Shape, Sphere, depth_map, draw, make_lighting
from .seeds import SCENES, seed_for

SHAPES = ("sphere", "cube", "cylinder")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
RGB = np.array(
    [
        (0.34, 0.34, 0.34),
        (0.68, 0.14, 0.14),
        (0.16, 0.29, 0.84),
        (0.11, 0.41, 0.08),
        (0.51, 0.29, 0.10),
        (0.51, 0.15, 0.75),
        (0.16, 0.82, 0.82),
        (1.0, 0.93, 0.2),
    ],
    np.float32,
)
SIZES = ("small", "large")
RADII = (0.5, 0.9)  # world units: a sphere's radius; the other shapes scale with it
CUBE_HALF_SIDE = 0.8  # times the size radius; with the cylinder's, so that the three look alike in bulk
CYLINDER_RADIUS, CYLINDER_HEIGHT = 0.85, 1.7
MATERIALS = ("matte", "shiny")
COUNTS = (3, 10)
DEPTHS = (4.0, 16.0)
LATERAL = (0.06, 0.94)  # where on screen (u) an object's centre may stand
GAP = 0.1  # world units kept free between two footprints
MIN_VISIBLE = 0.4
CANDIDATES = 16  # positions tried at once for each object
MAX_MOVES = 20  # rounds of moving hidden objects before a layout starts over
MAX_LAYOUTS = 200
DIST_EDGES = (4.0, 4.28, 4.61, 5.03, 5.61, 6.68, 16.0)
TASK_CLASSES = {
    "count": tuple(str(n) for n in range(COUNTS[0], COUNTS[1] + 1)),
    "dist": tuple(f"{lo}-{hi}" for lo, hi in zip(DIST_EDGES, DIST_EDGES[1:])),
    "none": (),
}
SEGMENTATIONS = {"shape": ("background",) + SHAPES, "color": ("background",) + COLORS}
DENSE_KINDS = ("shape", "color", "depth", "instance")


@dataclass(frozen=True)
class SceneObject:
    """One object. ``screen`` is its centre on the image, (u, v) in [0, 1] (times the image size for
    pixels); ``rotation`` (radians about the vertical) matters for cubes only."""

    shape: str
    color: str
    size: str
    material: str
    x: float
    z: float
    rotation: float
    screen: tuple[float, float]


@dataclass(frozen=True)
class Layout:
    """A scene before drawing: its objects (nearest first), their images, the light."""

    objects: tuple[SceneObject, ...]
    shapes: tuple[Shape, ...]
    shadows: tuple[tuple[float, float, float, float], ...]  # (x, z, footprint radius, height)
    light: Lighting


@dataclass(frozen=True)
class Scene:
    """A drawn scene: ``image`` uint8 [H, W, 3], ``instance`` int32 [H, W], ``depth`` float32 [H, W]
    (see the module's conventions)."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    instance: np.ndarray
    depth: np.ndarray

    @property
    def seg(self) -> np.ndarray:
        return self.segmentation("shape")

    def segmentation(self, kind: str = "shape") -> np.ndarray:
        """uint8 [H, W]: classes ``SEGMENTATIONS[kind]``, kind ``shape`` or ``color``."""
        if kind not in SEGMENTATIONS:
            raise DataError(f"segmentation kind must be one of {', '.join(SEGMENTATIONS)}, got {kind!r}")
        names = SHAPES if kind == "shape" else COLORS
        per_id = np.array([0] + [names.index(getattr(o, kind)) + 1 for o in self.objects], np.uint8)
        return per_id[self.instance]


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(seed_for(seed, SCENES, index))


def _draw_count(rng: np.random.Generator) -> int:
    """The first draw of every scene, so that ``count`` labels need nothing else."""
    return int(rng.integers(COUNTS[0], COUNTS[1] + 1))


def _draw_light(rng: np.random.Generator) -> Lighting:
    azimuth, elevation, intensity, ambient, floor, haze, blue = rng.random(7)
    return make_lighting(
        azimuth=-1.0 + 2.0 * azimuth,
        elevation=0.8 + 0.5 * elevation,
        intensity=0.55 + 0.3 * intensity,
        ambient=0.25 + 0.2 * ambient,
        floor=np.full(3, 0.45 + 0.2 * floor),
        haze=np.full(3, 0.6 + 0.2 * haze),
        sky=np.array([0.45, 0.55, 0.65 + 0.25 * blue]),
    )


def _dimensions(shape: int, radius: float) -> tuple[float, float]:
    """(footprint radius, height) of a shape of size ``radius``; a cube's footprint is the circle
    through its corners, whatever its turn."""
    if shape == 0:
        return radius, 2.0 * radius
    if shape == 1:
        return CUBE_HALF_SIDE * math.sqrt(2.0) * radius, 2.0 * CUBE_HALF_SIDE * radius
    return CYLINDER_RADIUS * radius, CYLINDER_HEIGHT * radius


def _free_spot(
    rng: np.random.Generator, others: list[tuple[float, float, float]], reach: float
) -> tuple[float, float] | None:
    """The first of CANDIDATES random floor positions (x, z) whose footprint (radius ``reach``)
    keeps GAP from the ``others`` (x, z, reach); None when none does. Plain Python: the first
    candidate is nearly always free, and ten distances cost less than numpy's calls."""
    for u, t in zip(*rng.random((2, CANDIDATES)).tolist()):
        z = DEPTHS[0] + (DEPTHS[1] - DEPTHS[0]) * t
        x = (LATERAL[0] + (LATERAL[1] - LATERAL[0]) * u - 0.5) * z / FOCAL
        if all(math.hypot(x - ox, z - oz) >= reach + o_reach + GAP for ox, oz, o_reach in others):
            return x, z
    return None


_PROBE_U = np.tile((np.arange(8) + 0.5) / 8, 8)  # an 8x8 grid over a unit box, row by row
_PROBE_V = np.repeat((np.arange(8) + 0.5) / 8, 8)


def _hidden(shapes: list[Shape]) -> list[int]:
    """The shapes (nearest first) that show less than MIN_VISIBLE of their outline: probed on an
    8x8 grid over the box, less the points off the image or inside a nearer shape. A shape whose
    box is on the image and clear of nearer boxes needs no probe."""
    hidden = []
    for k, shape in enumerate(shapes):
        u0, v0, u1, v1 = shape.box
        on_image = u0 > 0 and v0 > 0 and u1 < 1 and v1 < 1
        nearer = [
            near
            for near in shapes[:k]
            if near.box[0] < u1 and near.box[2] > u0 and near.box[1] < v1 and near.box[3] > v0
        ]
        if on_image and not nearer:
            continue
        u, v = (u0 + (u1 - u0) * _PROBE_U)[None], (v0 + (v1 - v0) * _PROBE_V)[None]
        seen = shape.inside(u, v)
        needed = MIN_VISIBLE * seen.sum()
        if not on_image:
            seen &= (u > 0) & (u < 1) & (v > 0) & (v < 1)
        for near in nearer:
            seen &= ~near.inside(u, v)
        if seen.sum() < needed:
            hidden.append(k)
    return hidden


def _shape_image(kind: list[int], x: float, z: float, rotation: float) -> Shape:
    shape, colour, size, material = kind
    r, rgb, shiny = RADII[size], RGB[colour], material == 1
    if shape == 0:
        return Sphere(x, z, r, rgb, shiny)
    if shape == 1:
        return Cube(x, z, CUBE_HALF_SIDE * r, rotation, rgb, shiny)
    return Cylinder(x, z, CYLINDER_RADIUS * r, CYLINDER_HEIGHT * r, rgb, shiny)


def _arrange(
    rng: np.random.Generator, kinds: list[list[int]], rotations: list[float], reach: list[float]
) -> tuple[list[int], list[tuple[float, float]], list[Shape]] | None:
    """(order nearest first, floor positions (x, z), shapes) of the objects, every one visible:
    each placed in turn on free floor, then any that a nearer one hides (or the image's edge cuts)
    moved again, MAX_MOVES times at most. None when that fails: the caller starts over."""
    placed = []
    for k in range(len(kinds)):
        spot = _free_spot(rng, [(*p, r) for p, r in zip(placed, reach)], reach[k])
        if spot is None:
            return None
        placed.append(spot)
    shapes = [_shape_image(kinds[k], *placed[k], rotations[k]) for k in range(len(kinds))]
    for _ in range(MAX_MOVES):
        order = sorted(range(len(kinds)), key=lambda k: placed[k][1])
        hidden = _hidden([shapes[k] for k in order])
        if not hidden:
            return order, placed, shapes
        for k in (order[n] for n in hidden):
            others = [(*p, r) for n, (p, r) in enumerate(zip(placed, reach)) if n != k]
            spot = _free_spot(rng, others, reach[k])
            if spot is None:
                return None
            placed[k] = spot
            shapes[k] = _shape_image(kinds[k], *spot, rotations[k])
    return None


def scene_layout(seed: int, index: int) -> Layout:
    """Scene ``index`` of ``seed``: its objects (nearest first), where they stand, and its light."""
    rng = _scene_rng(seed, index)
    count = _draw_count(rng)
    kinds = rng.integers(0, (len(SHAPES), len(COLORS), len(SIZES), len(MATERIALS)), (count, 4)).tolist()
    rotations = rng.uniform(0.0, math.pi / 2, count).tolist()
    light = _draw_light(rng)
    bulk = [_dimensions(k[0], RADII[k[2]]) for k in kinds]
    for _ in range(MAX_LAYOUTS):
        arranged = _arrange(rng, kinds, rotations, [b[0] for b in bulk])
        if arranged is not None:
            break
    else:
        raise RuntimeError(f"scene {index} of seed {seed}: no room for {count} objects in {MAX_LAYOUTS} layouts")
    order, placed, shapes = arranged
    objects = tuple(
        SceneObject(
            SHAPES[shape], COLORS[colour], SIZES[size], MATERIALS[material], *placed[k], rotations[k], shapes[k].centre
        )
        for k in order
        for shape, colour, size, material in [kinds[k]]
    )
    shadows = tuple((*placed[k], *bulk[k]) for k in order)
    return Layout(objects, tuple(shapes[k] for k in order), shadows, light)


def render_scene(seed: int, index: int, image_size: int = 64) -> Scene:
    """Scene ``index`` of ``seed`` drawn at ``image_size`` pixels, with its dense maps."""
    layout = scene_layout(seed, index)
    image, instance = draw(layout.shapes, layout.light, image_size, layout.shadows)
    depth = depth_map(instance, np.array([o.z for o in layout.objects]))
    return Scene(np.ascontiguousarray(_to_uint8(image).transpose(1, 2, 0)), layout.objects, instance, depth)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (image * 255.0 + 0.5).astype(np.uint8)


def task_label(task: str, objects: tuple[SceneObject, ...]) -> int:
    if task == "count":
        return len(objects) - COUNTS[0]
    if task == "dist":
        return int(np.searchsorted(DIST_EDGES[1:-1], min(o.z for o in objects), side="right"))
    return -1


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class SceneDataset(torch.utils.data.Dataset):
    """``size`` scenes of ``seed`` at ``image_size`` pixels, scene indices ``first`` onwards: items
    (image float32 [in_chans, H, W] in [0, 1], label) for ``task`` count, dist or none (-1).
    ``scene(i)`` is the whole record, ``dense(i, kind)`` one dense target (``DENSE_KINDS``);
    ``labels`` are computed without drawing, once. ``in_chans`` 1 gives the scenes in grey."""

    def __init__(
        self, size: int, image_size: int = 64, seed: int = 0, task: str = "count", first: int = 0, in_chans: int = 3
    ):
        if not _whole(size) or size < 1:
            raise DataError(f"scenes: size must be a whole number >= 1, got {size!r}")
        if not _whole(image_size) or image_size < 8:
            raise DataError(f"scenes: image_size must be a whole number >= 8, got {image_size!r}")
        if not _whole(seed):
            raise DataError(f"scenes: seed must be a whole number, got {seed!r}")
        if task not in TASK_CLASSES:
            raise DataError(f"scenes: task must be one of {', '.join(TASK_CLASSES)}, got {task!r}")
        if not _whole(first) or first < 0 or in_chans not in (1, 3):
            raise DataError(
                f"scenes: first must be a whole number >= 0 and in_chans 1 or 3, got {first!r}, {in_chans!r}"
            )
        self.size, self.image_size, self.seed, self.task = int(size), int(image_size), int(seed), task
        self.first, self.in_chans = int(first), in_chans
        self._labels: list[int] | None = None

    def __len__(self) -> int:
        return self.size

    @property
    def classes(self) -> tuple[str, ...]:
        return TASK_CLASSES[self.task]

    @property
    def labels(self) -> list[int]:
        if self._labels is None:
            if self.task == "count":  # the first draw alone
                self._labels = [_draw_count(_scene_rng(self.seed, i)) - COUNTS[0] for i in self._indices()]
            elif self.task == "dist":
                self._labels = [task_label("dist", scene_layout(self.seed, i).objects) for i in self._indices()]
            else:
                self._labels = [-1] * self.size
        return self._labels

    def _indices(self) -> range:
        return range(self.first, self.first + self.size)

    def _check(self, i: int) -> int:
        """The scene index of item ``i``."""
        if not -self.size <= i < self.size:
            raise IndexError(f"scene {i} out of range for {self.size} scenes")
        return self.first + i % self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        layout = scene_layout(self.seed, self._check(i))
        image, _ = draw(layout.shapes, layout.light, self.image_size, layout.shadows)
        pixels = to_channels(torch.from_numpy(_to_uint8(image)).float().div_(255.0), self.in_chans)
        return pixels, task_label(self.task, layout.objects)

    def scene(self, i: int) -> Scene:
        return render_scene(self.seed, self._check(i), self.image_size)

    def dense(self, i: int, kind: str = "shape") -> torch.Tensor:
        """[H, W]: ``shape`` or ``color`` classes (uint8, ``SEGMENTATIONS``), ``depth`` (float32,
        world units) or ``instance`` (int32, 0 background, k the k-th nearest object)."""
        if kind not in DENSE_KINDS:
            raise DataError(f"scenes: dense kind must be one of {', '.join(DENSE_KINDS)}, got {kind!r}")
        scene = self.scene(i)
        if kind in SEGMENTATIONS:
            return torch.from_numpy(scene.segmentation(kind))
        return torch.from_numpy(scene.depth if kind == "depth" else scene.instance)
