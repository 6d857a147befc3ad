"""Tar shards in the WebDataset layout (``data.dataset: webdataset``; the ``webdataset`` extra):
each sample is the files of one key in a tar (``0001.jpg``, ``0001.cls``), read as a stream from
local disks, NFS, or a ``pipe:`` command (object stores).

An epoch is ``data.samples_per_epoch`` samples, cut from per-slot streams. A *slot* is one
(process, loader worker) pair; each epoch the shards are permuted from (seed, epoch) and dealt to
the slots round-robin, so no shard is read by two slots in an epoch. A slot reads its shards in
order through a shuffle buffer seeded from (seed, epoch, slot) and cuts its stream into
micro-batches; micro-batch ``b`` of an epoch belongs to slot ``b mod workers`` of its process.
Batches are therefore a pure function of (seed, batch number, processes, workers):

- a resumed run with the same processes and workers sees exactly the batches an uninterrupted one
  would (each slot re-reads, without decoding, what it had consumed of the current epoch);
- with other counts it resumes at the right epoch and sample count, but the rest of that epoch is
  drawn afresh (a sample may repeat or be missed in that one epoch).

A slot whose shards run out before its share of the epoch starts them again. Every sample is read
exactly once per epoch when the slots' shares match their shards: shards of equal size, their
number a multiple of processes x workers, ``samples_per_epoch`` the samples they hold, and each
process's micro-batches per epoch a multiple of its workers (tested); otherwise some samples of an
epoch repeat and others wait for the next. Samples that cannot be decoded, or have no image, are skipped and counted as in
a folder; a shard that cannot be read is named in the log and skipped.
"""

from __future__ import annotations

import io
import itertools
import logging
from pathlib import Path

import torch

from .images import IMAGE_EXTENSIONS, DataError, UnreadableImage, load_image
from .seeds import ORDER, SHUFFLE, generator_for, stream_of
from .sources import ArrayDataset
from .transforms import resize_center_crop

log = logging.getLogger("openjepa")
IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


def _webdataset():
    try:
        from webdataset import tariterators
    except ImportError:
        raise DataError(
            "data.dataset=webdataset needs the webdataset package: pip install 'openjepa[shards]'"
        ) from None
    return tariterators


def expand_shards(root_path: str | list[str]) -> list[str]:
    """A brace pattern (``/data/train-{000000..000099}.tar``), a list of them, or ``pipe:`` commands
    -> the list of shard URLs. Local files must exist (named when they do not)."""
    from braceexpand import braceexpand

    patterns = [root_path] if isinstance(root_path, str) else list(root_path)
    urls = [url for pattern in patterns for url in braceexpand(pattern)]
    if not urls or not all(urls):
        raise DataError(
            "data.root_path names no shards: give a brace pattern such as "
            "/data/train-{000000..000099}.tar, or a list of shards"
        )
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    folders = [u for u in local if Path(u).is_dir()]
    if folders:
        tars = sorted(p.name for p in Path(folders[0]).glob("*.tar"))[:2]
        hint = f" (it holds {', '.join(tars)}...)" if tars else ""
        raise DataError(
            f"data.root_path {folders[0]} is a folder{hint}: give the shard files, e.g. a brace pattern such as "
            f"{folders[0].rstrip('/')}/train-{{000000..000099}}.tar"
        )
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(urls)} shards not found, e.g. {missing[0]}")
    return urls


def sample_image(sample: dict, in_chans: int) -> torch.Tensor:
    """The image of a tar sample (its first file with an image extension), decoded; UnreadableImage
    when it has none or it cannot be decoded."""
    name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    key = next((k for k in sample if k[:2] != "__" and k.lower().rsplit(".", 1)[-1] in IMAGE_KEYS), None)
    if key is None:
        raise UnreadableImage(
            name, f"no image in the sample (its files: {', '.join(k for k in sample if k[:2] != '__')})"
        )
    return load_image(io.BytesIO(sample[key]), in_chans, name=f"{name}.{key}")


def sample_label(sample: dict) -> int:
    value = sample.get("cls")
    try:
        return int(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        return -1


class TarShards:
    """The source: the shard list and the epoch length. ``len`` is ``samples_per_epoch`` (for the
    schedules); ``stream`` gives a slot's samples of one epoch; ``head(n)`` the first ``n``
    readable images (an in-memory dataset with labels), for the monitor and the collapse probe."""

    def __init__(
        self, root_path: str | list[str], samples_per_epoch: int, in_chans: int = 3, shuffle_buffer: int = 1000
    ):
        if samples_per_epoch < 1:
            raise DataError(
                "data.dataset=webdataset needs data.samples_per_epoch (the samples one epoch "
                "reads; at most the samples the shards hold)"
            )
        _webdataset()
        self.urls = expand_shards(root_path)
        self.samples_per_epoch, self.in_chans, self.shuffle_buffer = samples_per_epoch, in_chans, shuffle_buffer

    def __len__(self) -> int:
        return self.samples_per_epoch

    def raw(self, urls: list[str]):
        """Every sample of ``urls`` in order (dicts of bytes); a shard that cannot be read is logged
        and skipped."""

        def skip(error: Exception) -> bool:
            log.warning("shard skipped from here on (cannot be read): %s: %s", type(error).__name__, error)
            return True

        return _webdataset().tarfile_samples(iter([{"url": u} for u in urls]), handler=skip)

    def stream(self, seed: int, epoch: int, slot: int, slots: int):
        """Slot ``slot`` of ``slots`` in this epoch: raw samples of its shards through a seeded shuffle
        buffer, emptied at the end of each pass over them (so a share of exactly one pass holds every
        sample of its shards once); then its shards again, in another order. Endless."""
        order = torch.randperm(len(self.urls), generator=generator_for(seed, ORDER, epoch)).tolist()
        mine, split = [self.urls[i] for i in order[slot::slots]], 1
        if len(self.urls) < slots:  # fewer shards than slots: every slot reads them all, keeping every slots-th sample
            mine, split = [self.urls[i] for i in order], slots
        g = generator_for(seed, SHUFFLE, epoch, slot)
        buffer = []

        def pop():
            j = int(torch.randint(len(buffer), (1,), generator=g))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            return buffer.pop()

        for p in itertools.count():
            if p:  # the same new order for every slot of a split read: their shares stay disjoint
                again = generator_for(seed, ORDER, epoch, p, slot if split == 1 else -1)
                mine = [mine[i] for i in torch.randperm(len(mine), generator=again)]
            got = False
            for i, sample in enumerate(self.raw(mine)):
                if split > 1 and i % split != slot:
                    continue
                got = True
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield pop()
            if not got:
                if len(mine) == len(self.urls):  # it was reading them all already
                    raise DataError(
                        f"slot {slot} of {slots} found no sample in the shards {self.urls[0]} ...: "
                        f"unreadable, or fewer samples than slots"
                    )
                log.warning(
                    "slot %d of epoch %d: its shards (%s ...) gave no sample; it reads every shard instead",
                    slot,
                    epoch,
                    mine[0],
                )
                mine, split = list(self.urls), 1
            while buffer:
                yield pop()

    def head(self, n: int, size: int):
        """The first ``n`` readable images of the first shards (in their order), each brought to
        ``size`` x ``size`` as it is read (resize, centre crop), with their labels: an in-memory
        dataset (uint8, n x size x size x channels bytes)."""
        images, labels = [], []
        for sample in self.raw(self.urls):
            try:
                img = sample_image(sample, self.in_chans)
            except UnreadableImage:
                continue
            images.append(resize_center_crop(img[None], (size, size))[0].mul(255).round().to(torch.uint8))
            labels.append(sample_label(sample))
            if len(images) == n:
                break
        if not images:
            raise DataError(f"no readable image in the shards {self.urls[0]} ...")
        return ArrayDataset(torch.stack(images), labels, self.in_chans)


class ShardBatches(torch.utils.data.IterableDataset):
    """Numbered micro-batches ``start .. total-1`` of this process from ``source``, as lists of the
    items ``MaskCollator`` takes ((image, batch number), or (None, name) for a skipped sample).
    With W loader workers, worker w yields the batches ``start + w``, ``start + w + W``, ... in
    order, which is the order the DataLoader interleaves them in."""

    def __init__(
        self,
        source: TarShards,
        transform,
        batch_size: int,
        per_epoch: int,
        start: int,
        total: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ):
        self.source, self.transform, self.batch_size, self.per_epoch = source, transform, batch_size, per_epoch
        self.start, self.total, self.seed = start, total, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        W, B = self.workers, self.batch_size
        mine = range(self.start + worker, self.total, W)
        epoch, stream = None, None
        for b in mine:
            if b // self.per_epoch != epoch:
                epoch = b // self.per_epoch
                first = epoch * self.per_epoch
                slot = (b - first) % W  # this worker's slot in this epoch
                stream = self.source.stream(self.seed, epoch, self.rank * W + slot, self.world_size * W)
                for _ in range(((b - first) // W) * B):  # resume inside the epoch: read, do not decode
                    next(stream)
            yield [self._item(next(stream), b, j) for j in range(B)]

    def _item(self, sample: dict, b: int, j: int):
        try:
            img = sample_image(sample, self.source.in_chans)
        except UnreadableImage as e:
            return None, e.path
        stream = stream_of(self.transform)
        return self.transform(img, generator_for(self.seed, stream, b, self.rank * self.batch_size + j)), b
