import csv
import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from openjepa.data import (
    ArrayDataset,
    DataError,
    ImageFolder,
    PretrainTransform,
    UnreadableImage,
    build_pretrain_loader,
    crop_box,
    fashion_mnist,
    load_image,
)
from openjepa.masks import build_mask_sampler
from openjepa.pretrain import train


def make_images(folder, n=8, size=20, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(sub / f"{i}.png")


def make_odd_images(folder):
    """Unusual but valid images, and broken files."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    Image.fromarray((rng.integers(0, 65535, (24, 24))).astype(np.uint16)).save(folder / "deep16.png")
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    good = (folder / "rgba.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(rgb[:1, :1]).save(folder / "tiny.png")
    return {"zero.png", "text.jpg", "truncated.png", "tiny.png"}


def test_image_folder_labels_from_class_subfolders(tmp_path):
    make_images(tmp_path)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["a", "b"] and len(ds) == 8
    assert [ds.labels[i] for i in range(len(ds))] == [ds.classes.index(f.parent.name) for f in ds.files]
    img, label = ds[0]
    assert img.shape == (3, 20, 24) and 0 <= img.min() and img.max() <= 1


def test_flat_folder_is_unlabelled_and_missing_or_empty_folders_are_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert ImageFolder(tmp_path).labels == [-1]
    with pytest.raises(DataError, match="not found"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        ImageFolder(tmp_path / "empty")


def test_odd_formats_convert_and_broken_files_raise(tmp_path):
    broken = make_odd_images(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        if path.name in broken:
            with pytest.raises(UnreadableImage, match=path.name):
                load_image(path)
        else:
            for chans in (1, 3):
                img = load_image(path, chans)
                assert img.shape == (chans, 24, 24) and img.dtype == torch.float32
                assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.05, path.name


def test_training_on_a_folder_with_broken_images_skips_and_counts_them(tmp_path):
    data = tmp_path / "images"
    make_images(data, n=30, size=16)
    broken = make_odd_images(data)
    cfg = tiny_config(tmp_path / "run", data={"dataset": "folder", "root_path": str(data), "batch_size": 8})
    train(cfg)
    with open(tmp_path / "run/log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 35 images -> 4 batches of 8 per epoch, 2 epochs; each epoch meets each broken file at most once
    assert int(rows[-1]["step"]) == 8
    skipped = int(rows[-1]["skipped_images"])
    assert 0 < skipped <= 2 * len(broken)
    assert "unreadable image" in (tmp_path / "run/train.log").read_text()


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_are_read_exactly(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5))
    ds = fashion_mnist(tmp_path, "train", in_chans=1)
    img, label = ds[3]
    assert label == 3 and torch.equal((img[0] * 255).round().byte(), torch.from_numpy(images[3].astype(np.uint8)))
    with pytest.raises(DataError, match="not found"):
        fashion_mnist(tmp_path / "elsewhere")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 9, 28, 28))
    )
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist(tmp_path)


def test_crop_box_respects_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = crop_box(40, 60, (0.3, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.3 * 2400 * 0.9 <= h * w <= 2400
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15


def test_batches_do_not_depend_on_worker_count_or_start_point():
    ds = ArrayDataset(np.random.default_rng(0).integers(0, 255, (40, 12, 12), dtype=np.uint8), list(range(40)))
    transform = PretrainTransform(8, (0.3, 1.0), [0.5], [0.5])
    sampler = build_mask_sampler("multiblock", (4, 4), min_keep=2)

    def batches(workers, start):
        loader = build_pretrain_loader(ds, transform, sampler, 8, 5, start, 10, seed=3, num_workers=workers)
        return list(loader)

    serial, parallel, resumed = batches(0, 0), batches(2, 0), batches(0, 6)
    assert len(serial) == 10 and [b["batch"] for b in resumed] == list(range(6, 10))
    for a, b in zip(serial, parallel):
        assert torch.equal(a["images"], b["images"]) and same_masks(a, b)
    for a, b in zip(serial[6:], resumed):
        assert torch.equal(a["images"], b["images"]) and same_masks(a, b)
    assert not torch.equal(serial[0]["images"], serial[5]["images"])  # epoch 2 reshuffles and re-crops


def test_training_on_in_memory_arrays(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (48, 16, 16, 3), dtype=np.uint8)
    train(tiny_config(tmp_path), dataset=ArrayDataset(images))
    with open(tmp_path / "log.csv", newline="") as f:
        assert int(list(csv.DictReader(f))[-1]["step"]) == 6  # 48 // 16 x 2 epochs
    with pytest.raises(DataError, match="fewer than one optimiser step"):
        train(tiny_config(tmp_path / "small"), dataset=ArrayDataset(images[:8]))


def test_decoding_jpegs_on_the_device_gives_the_host_pipelines_batches(tmp_path):
    """data.decode_on_device (here the device is the CPU, the same code path as CUDA's nvJPEG):
    the same images, up to decoder rounding, the same masks and the same skipped files as the
    loader that decodes with PIL in its workers."""
    from openjepa.data import decode_batch

    rng = np.random.default_rng(0)
    for i in range(14):  # smooth content, so JPEG decoders' rounding stays within a grey level
        low = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((30 + i, 24 + 2 * i), Image.BILINEAR)
        (img.convert("L") if i % 5 == 0 else img).save(tmp_path / f"{i}.jpg", quality=95)
    make_odd_images(tmp_path)  # CMYK JPEG (PIL decodes it), PNGs, GIF, broken files
    good = (tmp_path / "3.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[:100])  # a header and no image
    transform = PretrainTransform(16, (0.3, 1.0), (0.5,) * 3, (0.25,) * 3, horizontal_flip=True)
    sampler = build_mask_sampler("multiblock", (4, 4), min_keep=2)
    host, device = (
        build_pretrain_loader(ImageFolder(tmp_path), transform, sampler, 8, 3, 0, 3, 7, encoded=encoded)
        for encoded in (False, True)
    )
    images = 0
    for a, b in zip(host, device):
        assert b["encoded"] and any(isinstance(item, tuple) for item in b["images"])
        b = decode_batch(b, transform, torch.device("cpu"))
        assert sorted(a["skipped"]) == sorted(b["skipped"])
        assert same_masks(a, b)
        # one grey level is 1/255/0.25 = 0.016 after normalisation
        assert (b["images"] - a["images"]).abs().max() < 0.1 and (b["images"] - a["images"]).abs().mean() < 0.01
        images += len(b["images"])
    assert images > 16


def test_training_with_jpegs_decoded_on_the_device_equals_training_with_host_decoding(tmp_path):
    """The whole loop with data.decode_on_device (device: the CPU): the same losses as decoding in
    the loader, and the monitor, which reads the dataset directly, still sees decoded images."""
    rng = np.random.default_rng(2)
    for i in range(40):
        sub = tmp_path / "data" / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)
        Image.fromarray(low).resize((20 + i % 5, 18), Image.BILINEAR).save(sub / f"{i}.jpg", quality=95)
    logs = []
    for on_device in (False, True):
        run = tmp_path / f"run_{on_device}"
        train(
            tiny_config(
                run,
                data={
                    "dataset": "folder",
                    "root_path": str(tmp_path / "data"),
                    "batch_size": 8,
                    "decode_on_device": on_device,
                },
                logging={"log_every": 1, "monitor_every": 1, "monitor_images": 20},
            )
        )
        with open(run / "log.csv", newline="") as f:
            logs.append([float(r["loss"]) for r in csv.DictReader(f)])
        assert (run / "monitor.csv").read_text().count("\n") == 3  # header + one row per epoch
    assert len(logs[0]) == 10 and logs[0] == logs[1]
    # the pictures of a run on a folder of several image sizes: brought to the crop size
    from openjepa.viz import sample_images

    cfg = tiny_config(run, data={"dataset": "folder", "root_path": str(tmp_path / "data"), "decode_on_device": True})
    assert sample_images(cfg, 4).shape == (4, 3, 16, 16)


def same_masks(a: dict, b: dict) -> bool:
    """Two batches hold the same mask groups, index for index."""
    return a["group_sizes"] == b["group_sizes"] and all(
        torch.equal(x, y) for key in ("context_idx", "target_idx") for x, y in zip(a[key], b[key])
    )


class CountingSampler:
    def __init__(self, sampler):
        self.sampler, self.images = sampler, 0

    def __call__(self, batch_size, generator=None):
        self.images += batch_size
        return self.sampler(batch_size, generator)


def collate(collator, n, batch=0, missing=()):
    return collator([((None, "bad.png") if i in missing else (torch.zeros(1, 2, 2), batch)) for i in range(n)])


def test_masks_packed_per_group_keep_the_paper_context_at_a_global_batch_of_2048():
    """The 14x14 grid of ViT-H/14: the loader's call for a global batch of 2048 (one process of 2048,
    or rank 5 of 16 processes of 128) gives contexts as long as a batch of 128 does, never cut to the
    shortest of all 2048; each process draws the masks of its own group only."""
    from openjepa.data import MaskCollator

    sampler = build_mask_sampler("multiblock", (14, 14))
    mean_len = {}
    for batch_size in (128, 2048):
        collator = MaskCollator(sampler, seed=0, batch_size=batch_size)
        lengths = []
        for b in range(4):
            out = collate(collator, batch_size, batch=b)
            assert sum(out["group_sizes"]) == batch_size and len(out["group_sizes"]) == batch_size // 128
            lengths += [c.size(1) for c in out["context_idx"] for _ in range(c.size(0))]
        mean_len[batch_size] = sum(lengths) / len(lengths)
        assert min(lengths) >= 25, (batch_size, min(lengths))
    assert abs(mean_len[2048] - mean_len[128]) <= 0.05 * mean_len[128], mean_len

    counting = CountingSampler(sampler)
    whole = collate(MaskCollator(sampler, 0, 2048), 2048, batch=3)
    rank5 = collate(MaskCollator(counting, 0, 128, rank=5, world_size=16), 128, batch=3)
    assert counting.images == 128  # its own group, not the global batch
    assert torch.equal(rank5["context_idx"][0], whole["context_idx"][5])


def test_n_processes_get_one_process_masks_whatever_the_group_and_skips():
    """Groups smaller than, equal to and straddling the processes' slices: the masks of rank r of w
    are the rows of one process's at the same global batch; an unreadable image takes its masks with
    it instead of shifting its neighbours'."""
    from openjepa.data import MaskCollator

    sampler = build_mask_sampler("multiblock", (4, 4), min_keep=2)

    def rows(out):  # (context, targets) of each image, in order
        return [(c[i], t[i]) for c, t in zip(out["context_idx"], out["target_idx"]) for i in range(c.size(0))]

    for group in (3, 4, 6, 16):
        one = rows(collate(MaskCollator(sampler, 7, 16, group=group), 16, batch=2))
        for world in (2, 4):
            per = 16 // world
            for rank in range(world):
                part = rows(collate(MaskCollator(sampler, 7, per, rank, world, group), per, batch=2))
                for (c, t), (c1, t1) in zip(part, one[rank * per : (rank + 1) * per], strict=True):
                    assert torch.equal(c, c1) and torch.equal(t, t1), (group, world, rank)
        holes = rows(collate(MaskCollator(sampler, 7, 16, group=group), 16, batch=2, missing={2, 5}))
        kept = [r for i, r in enumerate(one) if i not in (2, 5)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(holes, kept, strict=True))


def test_reference_sampler_block_sizes_follow_the_batch_number_in_any_worker_or_resume():
    """The reference's counter is shared by its loader workers and wound forward on resume: batch b
    draws its block sizes from seed b, whichever worker collates it and after any restart."""
    from openjepa.data import MaskCollator

    def sizes(out):
        return out["context_idx"][0].size(1), out["target_idx"][0].size(2)

    ref = build_mask_sampler("multiblock", (14, 14), reference=True)
    straight = [sizes(collate(MaskCollator(ref, 0, 8), 8, batch=b)) for b in range(6)]
    fresh = build_mask_sampler("multiblock", (14, 14), reference=True)  # a second worker, or a resumed run
    assert [sizes(collate(MaskCollator(fresh, 0, 8), 8, batch=b)) for b in (5, 3, 4)] == [
        straight[i] for i in (5, 3, 4)
    ]
    # and batch b's target blocks have the size the reference's own counter gives its (b+1)-th call
    counter = build_mask_sampler("multiblock", (14, 14), reference=True)
    g = torch.Generator().manual_seed(0)
    calls = [counter(8, g) for _ in range(6)]
    assert [t.size(2) for _, t in calls] == [kt for _, kt in straight]
