"""The pretraining loader: numbered micro-batches (a pure function of the seed and the batch number),
the transform per sample, masks drawn in the collate, and JPEGs optionally decoded on the device."""

from __future__ import annotations

import signal
from collections.abc import Callable

import torch

from .images import DataError, EncodedImage, UnreadableImage, load_image, to_channels
from .seeds import MASK, ORDER, generator_for, stream_of
from .transforms import PretrainTransform


class NumberedBatches(torch.utils.data.Sampler):
    """The one epoch sampler: yields batches ``start .. total-1`` as lists of keys (dataset index,
    batch number, epoch, position in the epoch's order). Batch b is slice ``b % per_epoch`` of
    epoch ``b // per_epoch``'s permutation of ``indices`` (all ``dataset_size`` items when None),
    drawn from (seed, ``stream``, epoch); rank r of w takes the r-th of w consecutive slices."""

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        per_epoch: int,
        start: int,
        total: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        indices: torch.Tensor | None = None,
        stream: int = ORDER,
    ):
        self.n, self.batch_size, self.per_epoch = dataset_size, batch_size, per_epoch
        self.start, self.total, self.seed, self.stream = start, total, seed, stream
        self.rank, self.world_size, self.indices = rank, world_size, indices

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        epoch, order = -1, None
        for b in range(self.start, self.total):
            if b // self.per_epoch != epoch:
                epoch = b // self.per_epoch
                n = self.n if self.indices is None else len(self.indices)
                order = torch.randperm(n, generator=generator_for(self.seed, self.stream, epoch))
                if self.indices is not None:
                    order = self.indices[order]
            first = ((b % self.per_epoch) * self.world_size + self.rank) * self.batch_size
            yield [(int(order[p]), b, epoch, p) for p in range(first, first + self.batch_size)]


class NumberedDataset(torch.utils.data.Dataset):
    """Looks up (index, batch number); applies the transform with a generator from
    (seed, batch number, index). An image that cannot be decoded comes back as None, to be
    skipped and counted by the collate. With ``encoded`` (and a dataset that offers it), JPEGs
    stay encoded with their crop drawn, for ``decode_batch`` on the device."""

    def __init__(self, base: torch.utils.data.Dataset, transform: Callable, seed: int, encoded: bool = False):
        self.base, self.transform, self.seed = base, transform, seed
        self.read = base.encoded if encoded and hasattr(base, "encoded") else base.__getitem__

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int, int]):
        index, batch = key[:2]
        try:
            img, _ = self.read(index)
        except UnreadableImage as e:
            return None, e.path
        generator = generator_for(self.seed, stream_of(self.transform), batch, index)
        if isinstance(img, EncodedImage):  # the same random draws; applied after decoding on the device
            return (img, self.transform.plan(img.height, img.width, generator)), batch
        return self.transform(img, generator), batch


class MaskCollator:
    """Stacks a micro-batch and samples its masks. Masks are drawn and packed (every context cut to
    the shortest of its group, every target to the shortest target) in consecutive groups of
    ``group`` images of the global batch (``mask.pack_group``: the paper's 128 images per GPU), each
    group from a generator of (seed, batch number, group), so the context statistics do not depend
    on the global batch or the number of processes. A process draws only the groups its slice of the
    global batch overlaps; N processes see exactly the masks of one process at the same global
    batch, and an image's masks do not depend on which of its neighbours were skipped.

    The batch holds one (context_idx, target_idx) pair per group present, in image order:
    ``context_idx`` and ``target_idx`` are lists, ``group_sizes`` the images of each."""

    def __init__(
        self, sampler: Callable, seed: int, batch_size: int, rank: int = 0, world_size: int = 1, group: int = 128
    ):
        if group < 1:
            raise DataError(f"the pack group must hold at least one image, got {group}")
        self.sampler, self.seed, self.group = sampler, seed, group
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def masks(self, batch: int, positions: list[int]) -> dict:
        """The masks of the images at these global positions of batch ``batch`` (ascending):
        ``context_idx`` and ``target_idx`` (one tensor per group) and ``group_sizes``."""
        contexts, targets, sizes = [], [], []
        seek = getattr(self.sampler, "seek", None)  # the reference sampler: block sizes from the batch number
        for g in sorted({p // self.group for p in positions}):
            if seek is not None:  # before every group, as the reference's counter before every GPU's batch
                seek(batch)
            context_idx, target_idx = self.sampler(self.group, generator_for(self.seed, MASK, batch, g))
            rows = torch.tensor([p - g * self.group for p in positions if p // self.group == g])
            contexts.append(context_idx[rows])
            targets.append(target_idx[rows])
            sizes.append(len(rows))
        return {"context_idx": contexts, "target_idx": targets, "group_sizes": sizes}

    def __call__(self, items: list) -> dict:
        good = [img for img, _ in items if img is not None]
        skipped = [path for img, path in items if img is None]
        batch = next((b for img, b in items if img is not None), -1)
        if not good:
            return {"images": None, "batch": batch, "skipped": skipped}
        first = self.rank * self.batch_size  # this process's first image in the global batch
        positions = [first + i for i, (img, _) in enumerate(items) if img is not None]
        encoded = any(isinstance(img, tuple) for img in good)
        return {
            "images": good if encoded else torch.stack(good),
            "encoded": encoded,
            **self.masks(batch, positions),
            "batch": batch,
            "skipped": skipped,
        }


def select_rows(batch: dict, keep: list[int]) -> dict:
    """The batch's masks for the images at ``keep`` (ascending indices into the batch); groups
    left empty are dropped."""
    contexts, targets, sizes, start = [], [], [], 0
    for c, t, n in zip(batch["context_idx"], batch["target_idx"], batch["group_sizes"]):
        rows = torch.tensor([i - start for i in keep if start <= i < start + n], dtype=torch.long)
        if len(rows):
            contexts.append(c[rows])
            targets.append(t[rows])
            sizes.append(len(rows))
        start += n
    return {"context_idx": contexts, "target_idx": targets, "group_sizes": sizes}


def decode_batch(batch: dict, transform: PretrainTransform, device: torch.device, in_chans: int = 3) -> dict:
    """Finish a batch whose JPEGs were left encoded: decode them together on ``device``
    (``torchvision.io.decode_jpeg``: nvJPEG on CUDA), then crop, resize, flip and normalise there
    with the crops drawn in the loader. Images decoded on the host already pass through. An image
    the device decoder rejects is decoded by PIL instead; one nothing can decode is skipped with
    its masks, and counted."""
    if not batch.get("encoded"):
        return batch
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
    items = batch["images"]
    jpegs = [i for i, item in enumerate(items) if isinstance(item, tuple)]
    try:
        decoded = dict(zip(jpegs, decode_jpeg([items[i][0].data for i in jpegs], mode=mode, device=device)))
    except RuntimeError:  # one bad file fails the whole call: decode one by one to find it
        decoded = {}
        for i in jpegs:
            try:
                decoded[i] = decode_jpeg(items[i][0].data, mode=mode, device=device)
            except RuntimeError:
                pass
    images, keep, skipped = [], [], list(batch["skipped"])
    for i, item in enumerate(items):
        if not isinstance(item, tuple):
            images.append(item.to(device, non_blocking=True))
        else:
            jpeg, plan = item
            try:
                img = decoded[i].float().div_(255) if i in decoded else load_image(jpeg.path, in_chans).to(device)
            except UnreadableImage:
                skipped.append(jpeg.path)
                continue
            images.append(transform.apply(to_channels(img, in_chans), plan))
        keep.append(i)
    out = {**batch, "encoded": False, "skipped": skipped}
    if not images:
        return {**out, "images": None}
    return {**out, "images": torch.stack(images), **select_rows(batch, keep)}


def close_loader(batches) -> None:
    """Stop a loader iterator's worker processes now. They ignore SIGTERM (the main process acts on
    it at a step boundary), so left to the interpreter's exit, multiprocessing would send them a
    SIGTERM they ignore and wait for them forever: a pre-empted run saved its checkpoint, then hung."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process loader iterator
    if shutdown is not None:
        shutdown()


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM / SIGUSR1 / SIGUSR2 and SIGINT (Ctrl-C reaches the whole process
    group) to the main process, which saves and stops at a step boundary; a worker killed first
    would break the batch the main process still needs."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def build_pretrain_loader(
    dataset,
    transform,
    sampler,
    batch_size: int,
    per_epoch: int,
    start: int,
    total: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    encoded: bool = False,
    pack_group: int = 128,
    collate: Callable | None = None,
) -> torch.utils.data.DataLoader:
    """One loader for the whole run (workers start once), from micro-batch ``start`` on.
    ``encoded`` (``data.decode_on_device``): JPEGs reach the training loop undecoded.
    ``pack_group``: images per mask group (``MaskCollator``). ``collate``: another way to make a
    micro-batch of the transformed items (DINO's views: ``augment.collate_views``, no masks).
    Tar shards (``shards.TarShards``) are streamed by ``shards.ShardBatches`` into the same
    numbered micro-batches."""
    if collate is None:
        collate = MaskCollator(sampler, seed, batch_size, rank, world_size, pack_group)
    common = dict(
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        worker_init_fn=_ignore_stop_signals if num_workers else None,
    )
    if hasattr(dataset, "stream"):
        from .shards import ShardBatches

        stream = ShardBatches(
            dataset, transform, batch_size, per_epoch, start, total, seed, rank, world_size, num_workers
        )
        return torch.utils.data.DataLoader(stream, batch_size=None, **common)
    batches = NumberedBatches(len(dataset), batch_size, per_epoch, start, total, seed, rank, world_size)
    return torch.utils.data.DataLoader(
        NumberedDataset(dataset, transform, seed, encoded), batch_sampler=batches, **common
    )
