"""Drawing the procedural scenes of ``scenes.py``: the camera, the three shapes as shaded 2-D
projections, the floor, the sky and the shadows, and the painter's algorithm.

Geometry lives in continuous image coordinates: u right and v down, both 0..1 across the square
image. A pixel is sampled at its centre (no anti-aliasing: speed first), so one scene drawn at 64
and at 224 pixels is the same picture at two sampling rates. Each shape's work is done inside its
bounding box only, in numpy, with no loop over pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The camera: a pinhole CAMERA_HEIGHT over the floor, its axis level along +z, its image shifted
# down (a shift lens) so that the horizon is the row HORIZON. A level axis makes the camera's depth
# the world's z, so a floor point's depth depends on its row alone: v = HORIZON + FOCAL * CAMERA_HEIGHT / z.
FOCAL = 0.9  # in image widths: about 58 degrees across
CAMERA_HEIGHT = 2.85
HORIZON = 0.24
DEPTH_FAR = 50.0  # the depth map's value for the sky; the floor's depth is clipped to it
FOG_DEPTH = 40.0  # things fade toward the haze colour as 1 - exp(-z / FOG_DEPTH)
SHININESS = {"curved": 40.0, "flat": 12.0}  # flat faces have one normal: a broad lobe, or they never shine
SPECULAR = 0.8  # the highlight's strength on shiny objects (white light)
SHADOW = 0.45  # how much of the direct light a shadow takes away at its centre


def project(x: float, y: float, z: float) -> tuple[float, float]:
    """The image position (u, v) of the world point (x lateral, y up, z depth)."""
    return 0.5 + FOCAL * x / z, HORIZON + FOCAL * (CAMERA_HEIGHT - y) / z


def circle_image(x: float, y: float, z: float, radius: float) -> tuple[float, float, float, float]:
    """A level circle (an object's base or top) seen by the camera: an ellipse (u, v, a, b) whose
    vertical semi-axis shrinks as the circle nears the eye's height or recedes."""
    rise = FOCAL * (CAMERA_HEIGHT - y) / (z * z - radius * radius)
    return 0.5 + FOCAL * x / z, HORIZON + rise * z, FOCAL * radius / z, rise * radius


@lru_cache(maxsize=16)
def pixel_centres(size: int) -> np.ndarray:
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    centres.flags.writeable = False  # shared by every image of this size
    return centres


def pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """The pixels n0:n1 of a row or column of ``size`` whose centres lie in [lo, hi] (image units)."""
    return max(0, math.ceil(lo * size - 0.5)), min(size, math.floor(hi * size - 0.5) + 1)


@lru_cache(maxsize=16)
def floor_depth(size: int) -> np.ndarray:
    """Each row's depth [size]: the floor's z under the camera, clipped to DEPTH_FAR, which is also
    the sky's."""
    below = pixel_centres(size) - HORIZON
    depth = np.where(below > 0, FOCAL * CAMERA_HEIGHT / np.maximum(below, 1e-9), DEPTH_FAR)
    depth = np.minimum(depth, DEPTH_FAR).astype(np.float32)
    depth.flags.writeable = False
    return depth


@dataclass(frozen=True)
class Lighting:
    """One image's light: a distant lamp (``direction`` points toward it; x right, y up, z away
    from the camera) over an ambient term, and the floor's and the sky's colours."""

    direction: tuple[float, float, float]
    half: tuple[float, float, float]  # halfway between the light and the viewer: where a highlight sits
    intensity: float
    ambient: float
    floor: np.ndarray  # RGB albedo; colours are [3, 1, 1], to broadcast over channel-first images
    haze: np.ndarray  # what far things fade to; the sky at the horizon
    sky: np.ndarray  # the sky at the top of the image


def make_lighting(
    azimuth: float,
    elevation: float,
    intensity: float,
    ambient: float,
    floor: np.ndarray,
    haze: np.ndarray,
    sky: np.ndarray,
) -> Lighting:
    """Azimuth 0 is a lamp behind the camera, positive to the right; elevation above the floor.
    Numbers are Python floats and colours float32, so that images stay float32."""
    level = math.cos(elevation)
    direction = (math.sin(azimuth) * level, math.sin(elevation), -math.cos(azimuth) * level)
    half = (direction[0], direction[1], direction[2] - 1.0)
    length = math.sqrt(sum(h * h for h in half))
    colours = (np.asarray(c, np.float32).reshape(3, 1, 1) for c in (floor, haze, sky))
    return Lighting(direction, tuple(h / length for h in half), float(intensity), float(ambient), *colours)


class Shape:
    """An object's image: its bounding ``box`` (u0, v0, u1, v1), ``inside(u, v)``, and its surface
    (``surface``: inside, cosines to the light and to the half vector, the last for shiny objects
    only) for shading."""

    shininess = SHININESS["curved"]

    def __init__(self, z: float, rgb: np.ndarray, shiny: bool, centre: tuple[float, float]):
        self.shiny, self.centre = shiny, centre
        self.fog = 1.0 - math.exp(-z / FOG_DEPTH)
        albedo = (1.0 - self.fog) * (0.75 if shiny else 1.0)  # metal is darker, and lit by its highlight
        self.rgb = np.asarray(rgb, np.float32).reshape(3, 1, 1) * albedo

    def pixel_box(self, size: int) -> tuple[int, int, int, int]:
        """Rows i0:i1 and columns j0:j1 whose pixel centres lie in the box, clipped to the image."""
        u0, v0, u1, v1 = self.box
        return (*pixel_span(v0, v1, size), *pixel_span(u0, u1, size))

    def colour(self, u: np.ndarray, v: np.ndarray, light: Lighting) -> tuple[np.ndarray, np.ndarray]:
        """(inside [h, w], RGB [3, h, w]) on the grid u [1, w] x v [h, 1]."""
        inside, to_light, to_half = self.surface(u, v, light)
        bright = light.ambient + light.intensity * np.maximum(to_light, 0.0)
        rgb = bright * self.rgb + light.haze * self.fog
        if self.shiny:
            glint = (SPECULAR * (1.0 - self.fog)) * np.maximum(to_half, 0.0) ** self.shininess
            rgb += glint
        return inside, rgb

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.surface(u, v, None)[0]


class Sphere(Shape):
    """A ball of radius r on the floor: a disc, lit as a hemisphere facing the camera."""

    def __init__(self, x: float, z: float, r: float, rgb: np.ndarray, shiny: bool):
        uc, vc = project(x, r, z)
        super().__init__(z, rgb, shiny, (uc, vc))
        self.radius = FOCAL * r / z
        self.box = (uc - self.radius, vc - self.radius, uc + self.radius, vc + self.radius)

    def surface(self, u, v, light):
        du, dv = (u - self.centre[0]) / self.radius, (v - self.centre[1]) / self.radius
        d2 = du * du + dv * dv
        if light is None:
            return d2 <= 1.0, None, None
        nz = -np.sqrt(np.maximum(1.0 - d2, 0.0))  # toward the camera
        to_light = du * light.direction[0] - dv * light.direction[1] + nz * light.direction[2]
        to_half = du * light.half[0] - dv * light.half[1] + nz * light.half[2] if self.shiny else None
        return d2 <= 1.0, to_light, to_half


class Cylinder(Shape):
    """An upright cylinder: a side lit by its horizontal normal, under an elliptic flat top."""

    def __init__(self, x: float, z: float, r: float, height: float, rgb: np.ndarray, shiny: bool):
        uc, v_base, a, b_base = circle_image(x, 0.0, z, r)
        _, v_top, _, b_top = circle_image(x, height, z, r)
        super().__init__(z, rgb, shiny, project(x, height / 2, z))
        self.u, self.a, self.v_base, self.b_base, self.v_top, self.b_top = uc, a, v_base, b_base, v_top, b_top
        self.box = (uc - a, v_top - b_top, uc + a, v_base + b_base)

    def surface(self, u, v, light):
        du = (u - self.u) / self.a
        across = np.sqrt(np.maximum(1.0 - du * du, 0.0))  # [1, w]: the side's normal, toward the camera
        dv_top = (v - self.v_top) / self.b_top
        top = du * du + dv_top * dv_top <= 1.0
        side = (np.abs(du) <= 1.0) & (v >= self.v_top) & (v <= self.v_base + self.b_base * across)
        if light is None:
            return top | side, None, None
        to_light = np.where(top, light.direction[1], du * light.direction[0] - across * light.direction[2])
        to_half = np.where(top, light.half[1], du * light.half[0] - across * light.half[2]) if self.shiny else None
        return top | side, to_light, to_half


# A cube's corners around its centre, counter-clockwise seen from above (x right, z away); side k
# runs from corner k to corner k + 1. Faces as corner numbers (0-3 the base, 4-7 the top): the top,
# then the sides, each outline the same way round seen from outside, so that on the image every
# visible face runs clockwise (v points down, and the projection keeps the turn of a face that
# faces the camera).
_CORNERS = ((1, 1), (-1, 1), (-1, -1), (1, -1))
_FACES = ((4, 5, 6, 7),) + tuple((k, (k + 1) % 4, 4 + (k + 1) % 4, 4 + k) for k in range(4))


class Cube(Shape):
    """A cube of half side s turned by ``rotation`` about the vertical: its top and the one or two
    sides that face the camera, each a flat-shaded convex quadrilateral (exact under perspective).
    A handful of corners: plain Python arithmetic is faster than numpy's calls here."""

    shininess = SHININESS["flat"]

    def __init__(self, x: float, z: float, s: float, rotation: float, rgb: np.ndarray, shiny: bool):
        super().__init__(z, rgb, shiny, project(x, s, z))
        c, si = math.cos(rotation) * s, math.sin(rotation) * s
        floor = [(x + a * c - b * si, z + a * si + b * c) for a, b in _CORNERS]
        base = [(0.5 + FOCAL * cx / cz, HORIZON + FOCAL * CAMERA_HEIGHT / cz) for cx, cz in floor]
        top = [(u, HORIZON + FOCAL * (CAMERA_HEIGHT - 2 * s) / cz) for (u, _), (_, cz) in zip(base, floor)]
        points = base + top
        normals, quads = [(0.0, 1.0, 0.0)], [[points[n] for n in _FACES[0]]]
        for k in range(4):
            nx, nz = (floor[(k + 1) % 4][0] + floor[k][0]) / 2 - x, (floor[(k + 1) % 4][1] + floor[k][1]) / 2 - z
            if nx * x + nz * z + s * s < 0:  # the outward normal (nx, nz) / s points at the camera
                normals.append((nx / s, 0.0, nz / s))
                quads.append([points[n] for n in _FACES[1 + k]])
        self.quads, self.normals = np.array(quads), np.array(normals)  # [faces, 4, (u, v)], [faces, 3]
        self.edges = np.roll(self.quads, -1, axis=1) - self.quads
        us, vs = [p[0] for p in points], [p[1] for p in points]
        self.box = (min(us), min(vs[4:]), max(us), max(vs[:4]))

    def faces(self, u, v) -> np.ndarray:
        """[faces, h, w]: inside each visible face (right of every edge of its clockwise outline)."""
        p, e = self.quads[:, :, :, None, None], self.edges[:, :, :, None, None]
        right = e[:, :, 0] * (v - p[:, :, 1]) - e[:, :, 1] * (u - p[:, :, 0]) <= 0
        return right.all(axis=1)

    def surface(self, u, v, light):
        faces = self.faces(u, v)
        if light is None:
            return faces.any(0), None, None
        face = faces.argmax(0)
        to_half = (self.normals @ light.half)[face] if self.shiny else None
        return faces.any(0), (self.normals @ light.direction)[face], to_half


@lru_cache(maxsize=16)
def _backdrop(size: int) -> tuple[np.ndarray, ...]:
    """Per row [size] of an image of ``size``: whether it is sky, how high in the sky (0 at the
    horizon, 1 at the top), the floor's haze share, and the share of light that depends on the
    lamp's side (none in the sky, fading with the haze); and per column, -1 left to 1 right."""
    v, depth = pixel_centres(size), floor_depth(size)
    sky = v < HORIZON
    fog = np.where(sky, 1.0, 1.0 - np.exp(-depth / FOG_DEPTH))
    terms = (sky, np.clip((HORIZON - v) / HORIZON, 0.0, 1.0), fog, 1.0 - fog, 2.0 * v - 1.0)
    return tuple(t[:, None].astype(np.float32) if t.dtype != bool else t[:, None] for t in terms)


def background(light: Lighting, size: int) -> np.ndarray:
    """The floor and the sky [3, size, size]: the floor lit by the lamp, a little brighter toward
    its side, fading with distance into the haze; the sky from haze at the horizon to ``sky``."""
    sky, up, fog, near, side = _backdrop(size)
    lit = light.floor * (light.ambient + light.intensity * light.direction[1])
    rows = np.where(sky, light.haze * (1.0 - up) + light.sky * up, lit * near + light.haze * fog)
    toward = near * side.T * (0.3 * light.direction[0]) + 1.0  # [size, size]
    return rows * toward  # [3, size, 1] x [size, size]


def cast_shadow(image: np.ndarray, x: float, z: float, radius: float, height: float, light: Lighting) -> None:
    """Darken the floor under an object's shadow: a soft ellipse, pushed away from the lamp."""
    reach = 0.5 * height / max(light.direction[1], 0.2)
    sx, sz = x - light.direction[0] * reach, z - light.direction[2] * reach
    if sz - radius < 1.0:  # the shadow would reach behind the camera
        return
    uc, vc, a, b = circle_image(sx, 0.0, sz, 1.1 * radius)
    size = image.shape[-1]
    centres = pixel_centres(size)
    (i0, i1), (j0, j1) = pixel_span(vc - b, vc + b, size), pixel_span(uc - a, uc + a, size)
    if j0 >= j1 or i0 >= i1:
        return
    du, dv = (centres[None, j0:j1] - uc) / a, (centres[i0:i1, None] - vc) / b
    share = light.intensity / (light.intensity + light.ambient)
    dark = 1.0 - SHADOW * share * np.sqrt(np.maximum(1.0 - du * du - dv * dv, 0.0))
    image[:, i0:i1, j0:j1] *= dark


def draw(shapes: list[Shape], light: Lighting, size: int, shadows=()) -> tuple[np.ndarray, np.ndarray]:
    """The image float32 [3, size, size] in [0, 1] and the instance map int32 [size, size] of
    ``shapes`` (nearest first): painted far to near, so nearer objects cover farther ones; pixel
    value k names shapes[k - 1], 0 the floor or sky. ``shadows`` are (x, z, radius, height)."""
    image = background(light, size)
    for shadow in shadows:
        cast_shadow(image, *shadow, light)
    instance = np.zeros((size, size), np.int32)
    centres = pixel_centres(size)
    for k in range(len(shapes) - 1, -1, -1):
        i0, i1, j0, j1 = shapes[k].pixel_box(size)
        if i0 >= i1 or j0 >= j1:
            continue
        inside, rgb = shapes[k].colour(centres[None, j0:j1], centres[i0:i1, None], light)
        np.copyto(image[:, i0:i1, j0:j1], rgb, where=inside)
        np.copyto(instance[i0:i1, j0:j1], k + 1, where=inside)
    return np.clip(image, 0.0, 1.0, out=image), instance


def depth_map(instance: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """float32 [H, W]: each object's pixels its depth z, the floor its own, the sky DEPTH_FAR."""
    per_id = np.concatenate([[DEPTH_FAR], depths]).astype(np.float32)
    return np.where(instance > 0, per_id[instance], floor_depth(instance.shape[0])[:, None])
