import json

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.data import DataError
from openjepa.data.dense_folder import IGNORE, DenseFolder, dense_splits
from openjepa.evaluate.dense_features import dense_features
from openjepa.models.vit import VisionTransformer

K = 3  # classes named in classes.txt
SIZE = (20, 24)  # height, width of every image


def dense_folder(root, n=3, seg=True, depth=True, classes=True):
    """ROOT/{train,val}/images (PNG and JPEG), labels/ (values 0..K, 0 = ignore) and depth/
    (uint16 millimetres, some 0)."""
    rng = np.random.default_rng(0)
    if classes:
        (root / "classes.txt").write_text("wall\nfloor\nsky\n")
    for split in ("train", "val"):
        folders = ["images"] + (["labels"] if seg else []) + (["depth"] if depth else [])
        for name in folders:
            (root / split / name).mkdir(parents=True)
        for i in range(n):
            ext = "jpg" if i % 2 else "png"
            pixels = rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / "images" / f"im{i}.{ext}")
            if seg:
                write_label(root, f"im{i}.png", rng.integers(0, K + 1, SIZE, dtype=np.uint8), split)
            if depth:
                mm = rng.integers(500, 9000, SIZE).astype(np.uint16)
                mm[0] = 0
                Image.fromarray(mm).save(root / split / "depth" / f"im{i}.png")
    return root


def test_a_good_folder_loads_with_ade20k_labels_and_depth_in_metres(tmp_path):
    root = dense_folder(tmp_path)
    train, val = dense_splits(root)
    assert len(train) == len(val) == 3 and train.classes == ["wall", "floor", "sky"] and train.num_classes == K
    image, target = train[1]
    assert image.shape == (3, *SIZE) and sorted(target) == ["depth", "seg"]
    stored = np.array(Image.open(root / "train/labels/im1.png"))
    seg = target["seg"]
    assert seg.dtype == torch.long and torch.equal(seg == IGNORE, torch.from_numpy(stored == 0))
    assert torch.equal(seg[stored > 0], torch.from_numpy(stored[stored > 0].astype(np.int64) - 1))
    mm = np.array(Image.open(root / "train/depth/im1.png")).astype(np.float32)
    assert torch.allclose(target["depth"], torch.from_numpy(mm / 1000)) and torch.all(target["depth"][0] == 0)


def test_depth_scale_comes_from_the_argument_else_depth_json(tmp_path):
    root = dense_folder(tmp_path, seg=False)
    (root / "depth.json").write_text(json.dumps({"scale": 256}))
    mm = np.array(Image.open(root / "val/depth/im0.png")).astype(np.float32)
    assert torch.allclose(DenseFolder(root, "val")[0][1]["depth"], torch.from_numpy(mm / 256))
    assert torch.allclose(DenseFolder(root, "val", depth_scale=1.0)[0][1]["depth"], torch.from_numpy(mm))


def test_palette_label_maps_are_read_as_their_indices_and_classes_txt_is_optional(tmp_path):
    root = dense_folder(tmp_path, depth=False, classes=False)
    stored = np.array(Image.open(root / "train/labels/im2.png"))
    palette = Image.fromarray(stored).convert("P")
    palette.putpalette([v for c in range(256) for v in (255 - c, c, 7)])
    palette.save(root / "train/labels/im2.png")
    folder = DenseFolder(root)
    assert folder.num_classes is None and sorted(folder[2][1]) == ["seg"]
    assert torch.equal(
        folder[2][1]["seg"],
        torch.from_numpy(stored.astype(np.int64) - 1).masked_fill(torch.from_numpy(stored == 0), IGNORE),
    )


def test_files_that_are_not_images_are_left_out(tmp_path):
    root = dense_folder(tmp_path)
    for name in ("images/notes.txt", "labels/Thumbs.db", "depth/.DS_Store"):
        (root / "train" / name).write_text("not an image")
    assert len(DenseFolder(root)) == 3


def test_dense_features_read_the_folder_and_skip_an_unreadable_image(tmp_path):
    root = dense_folder(tmp_path)
    (root / "train/images/im2.png").write_bytes(b"not an image")
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    encoder.mean, encoder.std = [0.5] * 3, [0.25] * 3
    feats = dense_features(encoder, DenseFolder(root), progress=False)
    assert feats.tokens.shape == (2, 4, 4, 32) and feats.seg.shape == feats.depth.shape == (2, 16, 16)
    assert feats.skipped == [str(root / "train/images/im2.png")]


def write_label(root, name, array, split="train"):
    Image.fromarray(array).save(root / split / "labels" / name)


BAD_FOLDERS = [  # (what is wrong, how to make it, the error's words, its file; read: raised when the item is read)
    (
        "label map of another size",
        lambda r: write_label(r, "im1.png", np.ones((10, 24), np.uint8)),
        r"is 24x10 but its image .* is 24x20",
        "train/labels/im1.png",
        False,
    ),
    (
        "image without label",
        lambda r: (r / "train/labels/im0.png").unlink(),
        "1 image\\(s\\) have no file in .*labels: ",
        "train/images/im0.png",
        False,
    ),
    (
        "label without image",
        lambda r: write_label(r, "extra.png", np.ones(SIZE, np.uint8)),
        "1 file\\(s\\) in .*labels have no image of their name: ",
        "train/labels/extra.png",
        False,
    ),
    (
        "label above classes.txt's K",
        lambda r: write_label(r, "im2.png", np.full(SIZE, K + 1, np.uint8)),
        f"holds label {K + 1} but .*classes.txt names {K} classes",
        "train/labels/im2.png",
        True,
    ),
    (
        "8-bit depth",
        lambda r: Image.fromarray(np.ones(SIZE, np.uint8)).save(r / "train/depth/im1.png"),
        "a depth map must be a 16-bit single-channel PNG .* mode L",
        "train/depth/im1.png",
        False,
    ),
    (
        "RGB label map",
        lambda r: write_label(r, "im1.png", np.ones((*SIZE, 3), np.uint8)),
        "a label map must be an 8-bit single-channel PNG .* mode RGB",
        "train/labels/im1.png",
        False,
    ),
    (
        "no images/ folder",
        lambda r: (r / "train/images").rename(r / "train/pictures"),
        "has no images/ folder",
        "train",
        False,
    ),
    (
        "no pairs at all",
        lambda r: [p.unlink() for p in sorted((r / "train").glob("*/*"))],
        "holds no image / label pairs",
        "train",
        False,
    ),
    (
        "neither labels nor depth",
        lambda r: [p.rename(r / f"{p.name}_old") for p in ((r / "train/labels"), (r / "train/depth"))],
        "has neither labels/ nor depth/",
        "train",
        False,
    ),
    (
        "JPEG label map",
        lambda r: Image.fromarray(np.ones(SIZE, np.uint8)).save(r / "train/labels/im9.jpg"),
        "1 file\\(s\\) in .*labels are not .png: ",
        "train/labels/im9.jpg",
        False,
    ),
    (
        "two images of one name",
        lambda r: Image.fromarray(np.ones(SIZE, np.uint8)).save(r / "train/images/im0.bmp"),
        "share the name 'im0'",
        "train/images/im0.png",
        False,
    ),
    (
        "depth.json with an unknown key",
        lambda r: (r / "depth.json").write_text('{"units": "mm"}'),
        "unknown or missing key: units",
        "depth.json",
        False,
    ),
    (
        "depth.json scale not positive",
        lambda r: (r / "depth.json").write_text('{"scale": 0}'),
        "scale must be a positive number",
        "depth.json",
        False,
    ),
]


@pytest.mark.parametrize(
    "make, match, culprit, read", [case[1:] for case in BAD_FOLDERS], ids=[case[0] for case in BAD_FOLDERS]
)
def test_a_bad_folder_is_a_one_line_data_error_naming_the_file(tmp_path, make, match, culprit, read):
    root = dense_folder(tmp_path)
    make(root)
    with pytest.raises(DataError, match=match) as error:
        folder = DenseFolder(root)
        if read:
            [folder[i] for i in range(len(folder))]
    message = str(error.value)
    assert str(root / culprit) in message and "\n" not in message


def test_train_and_val_must_carry_the_same_targets(tmp_path):
    root = dense_folder(tmp_path)
    for p in (root / "val/depth").iterdir():
        p.unlink()
    (root / "val/depth").rmdir()
    with pytest.raises(DataError, match="has depth and seg but .*val has seg"):
        dense_splits(root)
