"""A user's folder of images with dense labels (segmentation maps and / or depth), the input of the
dense probes (``evaluate.dense``). The layout:

    ROOT/classes.txt                     optional: the class names, one a line (K lines)
    ROOT/depth.json                      optional: {"scale": S}, stored depth values per unit
    ROOT/{train,val}/images/NAME.EXT     any image ``load_image`` reads (.png, .jpg, ...)
    ROOT/{train,val}/labels/NAME.png     8-bit label maps (mode L, or P read as palette indices)
    ROOT/{train,val}/depth/NAME.png      16-bit depth maps

A split needs ``images/`` and ``labels/`` or ``depth/`` or both, each file paired by NAME with an
image (files that are not images, such as notes or thumbnails databases, are left out). Items are ``(image [C, H, W] in [0, 1], {"seg": LongTensor [H, W], "depth": FloatTensor
[H, W]})``, with the targets the folder has.

Labels follow ADE20K: 0 is "other" and is not scored; 1..K are the classes. So a stored value v
becomes class v - 1 (0..K-1) and a stored 0 becomes ``IGNORE`` (255). classes.txt gives K, and a
value above K is an error; without it every value 1..255 is a class (255 becomes class 254).

Depth follows NYUv2 and KITTI: uint16, depth = stored / scale, 0 = no measurement. The scale is
the ``depth_scale`` argument, else depth.json's, else 1000 (millimetres to metres; KITTI: 256).

Pairing, file kinds and sizes are checked (from the files' headers) when the folder is opened;
label values when an item is read. A problem is a one-line ``DataError`` naming the file; an
image, label or depth file that cannot be decoded is ``UnreadableImage`` (its item is skipped by
the readers, as elsewhere).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import IMAGE_EXTENSIONS, DataError, UnreadableImage, load_image

IGNORE = 255  # the seg value of pixels that are not scored
DEFAULT_DEPTH_SCALE = 1000.0  # NYUv2's millimetres -> metres
TARGETS = {"labels": "seg", "depth": "depth"}  # folder -> item key
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # "I": how Pillow before 10 opens a 16-bit grey PNG
SHOWN = 3  # files named in an error about many


def named(paths: list[Path]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(str(p) for p in paths[:SHOWN]) + more


def index_folder(folder: Path, extensions=IMAGE_EXTENSIONS) -> dict[str, Path]:
    """NAME -> image file of ``folder`` (other files, hidden ones included, are left out, as a
    folder's notes or thumbnails). Two images of one NAME, or an image whose kind is not in
    ``extensions`` (a JPEG label map: lossy), is a DataError naming them."""
    files, wrong = {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.suffix.lower() not in extensions:
            wrong.append(path)
        elif path.stem in files:
            raise DataError(f"{files[path.stem]} and {path} share the name {path.stem!r}: pairs are matched by name")
        else:
            files[path.stem] = path
    if wrong:
        raise DataError(f"{len(wrong)} file(s) in {folder} are not {' / '.join(extensions)}: {named(wrong)}")
    return files


def pair_names(images: dict[str, Path], others: dict[str, Path], folder: Path) -> list[str]:
    """The names in both; an image without its ``folder`` file, or the reverse, is a DataError."""
    lonely_images = [images[n] for n in sorted(images.keys() - others.keys())]
    if lonely_images:
        raise DataError(f"{len(lonely_images)} image(s) have no file in {folder}: {named(lonely_images)}")
    lonely = [others[n] for n in sorted(others.keys() - images.keys())]
    if lonely:
        raise DataError(f"{len(lonely)} file(s) in {folder} have no image of their name: {named(lonely)}")
    return sorted(images)


def read_classes(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not 0 < len(names) <= IGNORE:
        raise DataError(f"{path} names {len(names)} classes; an 8-bit label map holds 1 to {IGNORE}")
    return names


def read_depth_scale(root: Path, given: float | None) -> float:
    """``given``, else depth.json's "scale", else ``DEFAULT_DEPTH_SCALE``; positive and finite."""
    path, where = root / "depth.json", "depth_scale"
    scale = given
    if scale is None and path.is_file():
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not JSON: {e}") from None
        unknown = sorted(set(spec) - {"scale"}) if isinstance(spec, dict) else ["(not an object)"]
        if unknown or "scale" not in spec:
            raise DataError(
                f'{path} must be {{"scale": number}}; unknown or missing key: {", ".join(unknown) or "scale"}'
            )
        scale, where = spec["scale"], f"{path}: scale"
    if scale is None:
        return DEFAULT_DEPTH_SCALE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise DataError(f"{where} must be a positive number (stored depth values per unit), got {scale!r}")
    return float(scale)


def header(path: Path) -> tuple[str, str, tuple[int, int]] | None:
    """(format, mode, (width, height)) from the file's header, or None if it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.format, im.mode, im.size
    except Exception:  # PIL raises many types for bad files; reading the item says which
        return None


def check_kind(path: Path, info, key: str) -> None:
    """A label map must be 8-bit single-channel PNG, a depth map 16-bit single-channel PNG."""
    if info is None:
        return
    fmt, mode, _ = info
    if key == "seg" and (fmt != "PNG" or mode not in ("L", "P")):
        raise DataError(f"{path}: a label map must be an 8-bit single-channel PNG (mode L or P), got {fmt} mode {mode}")
    if key == "depth" and (fmt != "PNG" or mode not in SIXTEEN_BIT):
        raise DataError(f"{path}: a depth map must be a 16-bit single-channel PNG (uint16), got {fmt} mode {mode}")


def check_size(image: Path, other: Path, image_size, other_size) -> None:
    """(width, height) of the two must agree."""
    if tuple(image_size) != tuple(other_size):
        raise DataError(
            f"{other} is {other_size[0]}x{other_size[1]} but its image {image} is {image_size[0]}x{image_size[1]}"
        )


def decode(path: Path, key: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            check_kind(path, (im.format, im.mode, im.size), key)
            return np.array(im)  # mode P: the palette indices, which are the labels
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for bad files; all mean "cannot decode"
        raise UnreadableImage(str(path), f"{type(e).__name__}: {e}") from None


class DenseFolder(torch.utils.data.Dataset):
    """The ``split`` of a dense folder (the module's note gives the layout). ``files[i]``: the
    image of item i; ``targets``: {item key: [paths]}; ``classes``: classes.txt's names or None,
    ``num_classes`` its K or None; ``depth_scale``."""

    def __init__(self, root: str | Path, split: str = "train", in_chans: int = 3, depth_scale: float | None = None):
        top = Path(root)
        if not top.is_dir():
            raise DataError(f"dense data folder {top} not found")
        self.root, self.in_chans = top / split, in_chans
        if not self.root.is_dir():
            raise DataError(f"dense data folder {top} has no {split}/ folder")
        if not (self.root / "images").is_dir():
            raise DataError(
                f"{self.root} has no images/ folder (layout: {split}/images/ with {split}/labels/ "
                f"and / or {split}/depth/)"
            )
        present = [name for name in TARGETS if (self.root / name).is_dir()]
        if not present:
            raise DataError(f"{self.root} has neither labels/ nor depth/: the dense probes need one of them")
        self.classes = read_classes(top)
        self.num_classes = len(self.classes) if self.classes else None
        self.depth_scale = read_depth_scale(top, depth_scale) if "depth" in present else None
        images = index_folder(self.root / "images")
        others = {TARGETS[name]: index_folder(self.root / name, (".png",)) for name in present}
        names = images.keys()
        for name in present:
            names = pair_names(images, others[TARGETS[name]], self.root / name)
        if not names:
            raise DataError(f"{self.root} holds no image / label pairs: images/ and {'/, '.join(present)}/ are empty")
        self.files = [images[n] for n in names]
        self.targets = {key: [files[n] for n in names] for key, files in others.items()}
        self.check_headers()

    def check_headers(self) -> None:
        """Every target file of the right kind and of its image's size, read from the headers (a
        file whose header cannot be read is left for the item's reading to report)."""
        for i, image in enumerate(self.files):
            image_info = header(image)
            for key, paths in self.targets.items():
                info = header(paths[i])
                check_kind(paths[i], info, key)
                if image_info is not None and info is not None:
                    check_size(image, paths[i], image_info[2], info[2])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image = load_image(self.files[i], self.in_chans)
        target = {}
        for key, paths in self.targets.items():
            stored = decode(paths[i], key)
            check_size(self.files[i], paths[i], (image.size(2), image.size(1)), (stored.shape[1], stored.shape[0]))
            target[key] = self.to_classes(stored, paths[i]) if key == "seg" else self.to_depth(stored)
        return image, target

    def to_classes(self, stored: np.ndarray, path: Path) -> torch.Tensor:
        """Stored 0 -> IGNORE, v -> class v - 1; a value above classes.txt's K is a DataError."""
        if self.num_classes is not None and stored.size and int(stored.max()) > self.num_classes:
            raise DataError(
                f"{path} holds label {int(stored.max())} but {self.root.parent / 'classes.txt'} names "
                f"{self.num_classes} classes (labels 0 = ignore, 1..{self.num_classes})"
            )
        seg = torch.from_numpy(stored.astype(np.int64)) - 1
        return seg.masked_fill_(seg < 0, IGNORE)

    def to_depth(self, stored: np.ndarray) -> torch.Tensor:
        """Stored / scale, in the depth's units; 0 stays 0 (no measurement)."""
        return torch.from_numpy(stored.astype(np.float32)) / self.depth_scale


def dense_splits(
    root: str | Path, in_chans: int = 3, depth_scale: float | None = None
) -> tuple[DenseFolder, DenseFolder]:
    """(train, val) of a dense folder; both must carry the same targets."""
    train, val = (DenseFolder(root, split, in_chans, depth_scale) for split in ("train", "val"))
    if sorted(train.targets) != sorted(val.targets):
        raise DataError(
            f"{train.root} has {' and '.join(sorted(train.targets))} but {val.root} has "
            f"{' and '.join(sorted(val.targets))}: train and val must carry the same labels"
        )
    return train, val
