"""The input pipeline, in four parts, each readable in one sitting:

- ``sources``: datasets of (image [C, H, W] in [0, 1], label): a folder, Fashion-MNIST, arrays,
  synthetic images, tar shards (``shards``), Hugging Face datasets (``hf``); ``build_dataset``;
- ``images``: decoding files and bytes, and what an unreadable image is;
- ``transforms``: the pretraining crop and the resize / centre-crop / normalise of evaluation;
- ``loader``: numbered micro-batches, masks in the collate, device decoding.
"""

from .build import build_dataset, check_readable
from .images import IMAGE_EXTENSIONS, DataError, EncodedImage, UnreadableImage, load_image, read_jpeg, to_channels
from .labelled import classes_of, labels_of, load_eval_data, load_three_splits
from .loader import (
    MaskCollator,
    NumberedBatches,
    NumberedDataset,
    build_pretrain_loader,
    close_loader,
    decode_batch,
    select_rows,
)
from .seeds import CROP, MASK, ORDER, generator_for, seed_for
from .sources import (
    FMNIST_CLASSES,
    ArrayDataset,
    ImageFolder,
    SyntheticDataset,
    download_fashion_mnist,
    fashion_mnist,
    fashion_mnist_arrays,
    find_fashion_mnist,
)
from .transforms import PretrainTransform, Resized, crop_box, normalize, per_channel, prepare, resize_center_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "EncodedImage",
    "UnreadableImage",
    "load_image",
    "read_jpeg",
    "to_channels",
    "MaskCollator",
    "NumberedBatches",
    "NumberedDataset",
    "build_pretrain_loader",
    "close_loader",
    "decode_batch",
    "select_rows",
    "CROP",
    "MASK",
    "ORDER",
    "generator_for",
    "seed_for",
    "FMNIST_CLASSES",
    "ArrayDataset",
    "ImageFolder",
    "SyntheticDataset",
    "build_dataset",
    "check_readable",
    "download_fashion_mnist",
    "fashion_mnist",
    "fashion_mnist_arrays",
    "find_fashion_mnist",
    "PretrainTransform",
    "Resized",
    "crop_box",
    "normalize",
    "per_channel",
    "prepare",
    "resize_center_crop",
    "classes_of",
    "labels_of",
    "load_eval_data",
    "load_three_splits",
]
