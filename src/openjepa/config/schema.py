"""The config's sections and keys: dataclasses with the reference's names and our defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DATASETS = ("folder", "fashion_mnist", "synthetic", "webdataset", "huggingface", "scenes")
LOSSES = ("smooth_l1", "l2")
SCENE_TASKS = ("count", "dist", "none")  # data.scenes.TASK_CLASSES (config sits below data)
TARGETS = ("representations", "pixels")
LR_SCALING = ("none", "linear", "sqrt")
OBJECTIVES = ("ijepa", "dino")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    dataset: str = "folder"  # folder | fashion_mnist | synthetic | webdataset | huggingface | scenes
    # folder: root_path / image_folder; fashion_mnist: the idx files ("" = search); webdataset: a brace
    # pattern or list of tar shards (or pipe: commands); huggingface: a save_to_disk folder or Parquet/Arrow files
    root_path: str | list[str] = ""
    image_folder: str = ""
    samples_per_epoch: int = 0  # webdataset: the samples one epoch reads (schedules and resume need it)
    shuffle_buffer: int = 1000  # webdataset: samples held by each loader worker's shuffle buffer
    image_key: str = ""  # huggingface: the image column ("" = the one column of images)
    label_key: str = ""  # huggingface: the label column ("" = 'label' or 'labels' where present; else unlabelled)
    split: str = "train"  # huggingface: the split of a DatasetDict folder
    synthetic_size: int = 1024  # images in the synthetic dataset (random blobs; for tests and benchmarks)
    scenes_size: int = 20000  # scenes: the procedural CLEVR-like scenes an epoch reads (drawn at crop_size)
    scenes_seed: int = 0  # scenes: which scenes (the evaluation's scenes:count / scenes:dist use seed 0)
    scenes_task: str = "count"  # scenes: the labels the monitor's kNN reads (count | dist | none)
    batch_size: int = 128  # per process
    crop_size: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    in_chans: int = 3
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 4
    pin_mem: bool = True
    use_horizontal_flip: bool = False
    decode_on_device: bool = False  # folder datasets: JPEGs decoded on the training device (torchvision)
    # Accepted for reference configs; I-JEPA uses no other augmentation, so they must stay off.
    use_gaussian_blur: bool = False
    use_color_distortion: bool = False
    color_jitter_strength: float = 0.0


@dataclass
class MaskConfig:
    strategy: str = "multiblock"  # multiblock | block | rasterized | random (the paper's Table 6)
    reference_sampler: bool = False  # reproduce the reference sampler's exact (biased) behaviour
    options: dict = field(default_factory=dict)  # extra options of the block/rasterized/random samplers
    patch_size: int = 16
    num_enc_masks: int = 1
    enc_mask_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    num_pred_masks: int = 4
    pred_mask_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])
    aspect_ratio: list[float] = field(default_factory=lambda: [0.75, 1.5])
    min_keep: int = 10
    allow_overlap: bool = False
    # Masks are drawn and packed (contexts cut to the group's shortest) in groups of this many images
    # of the global batch: the reference's 128 images per GPU, whatever the batch or process count.
    pack_group: int = 128
    # Static shapes (multiblock): each group's context length rounded down to a multiple of this many
    # tokens (0: off), so a compiled or graph-captured step sees a few lengths instead of dozens.
    bucket: int = 0


@dataclass
class MetaConfig:
    model_name: str = "vit_base"
    objective: str = "ijepa"  # ijepa | dino (a view-invariance baseline on the same engine, data and evaluation)
    pred_depth: int | None = None  # None: the paper's depth for model_name (6 up to ViT-B, 12 for L/H, 16 for g)
    pred_emb_dim: int = 384
    loss: str = "smooth_l1"  # smooth_l1 (reference code) | l2 (paper text)
    target: str = "representations"  # representations | pixels (the paper's Table 7 ablation)
    target_layers: int = (
        1  # targets: the mean of the target encoder's last k blocks, each layer-normed (data2vec); 1 = the paper's
    )
    use_bfloat16: bool = True  # bf16 autocast on CUDA
    cpu_bfloat16: bool | str = "auto"  # bf16 autocast on CPU too; auto: where the CPU has AMX / AVX512-BF16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Opt-in terms against collapse on the pooled context features (regularizers.py); 0 = off, the paper's method.
    variance_weight: float = 0.0  # C-JEPA / VICReg variance hinge
    variance_gamma: float = 1.0  # the standard deviation the hinge asks of each dimension
    covariance_weight: float = 0.0  # C-JEPA / VICReg off-diagonal covariance
    sigreg_weight: float = 0.0  # LeJEPA's SIGReg (Epps-Pulley on random 1-D projections)
    sigreg_slices: int = 256  # random directions per step
    invariance_weight: float = (
        0.0  # C-JEPA's invariance of the mean: pooled context vs the target encoder's pooled output
    )
    regularizer_final: float = 1.0  # the weights' multiplier at the end of training, by a cosine from 1; 1 = constant
    seed: int = 0
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (token counts marked dynamic: no recompiles)
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead captures CUDA graphs on a GPU
    fsdp: bool = False  # under torchrun: shard encoder, target encoder and predictor with FSDP (fully_shard)
    # Start a new run from a checkpoint (ours, the reference's .pth.tar, a fine-tuned or exported
    # encoder): its networks, with new optimiser state and schedules. A run that has its own
    # checkpoints/latest.pt resumes from it and ignores this.
    init_from: str = ""
    # The reference's spelling of init_from: load_checkpoint true and read_checkpoint the file (found in
    # logging.folder, as the reference looks for it, or as given). load_checkpoint alone: resume (always done).
    load_checkpoint: bool = False
    read_checkpoint: str | None = None
    copy_data: bool = False
    # DINO (meta.objective: dino; refused beside ijepa). The paper's head has 65536 prototypes.
    dino_out_dim: int = 4096  # prototypes K of the projection head
    dino_hidden: int = 2048  # the head's MLP width
    # BatchNorm after the head's two hidden layers (the DINO code's use_bn_in_head; off in its ViT recipe). On
    # small grey images a fresh ViT's pooled features barely differ between images, the centred teacher is then
    # uniform from step 0 and DINO never leaves loss = ln K; the norm spreads the head's output across images.
    dino_head_bn: bool = False
    dino_local_crops: int = 6  # local views per image besides the two global ones; 0: none
    dino_local_size: int = 0  # their side; 0 = 96/224 of data.crop_size, rounded to a multiple of mask.patch_size
    dino_teacher_temp: float = 0.07
    dino_warmup_teacher_temp: float = 0.04  # the teacher's temperature at step 0, rising linearly to dino_teacher_temp
    dino_teacher_temp_warmup: float = 0.3  # over this fraction of the run's schedule (epochs x steps x ipe_scale)


@dataclass
class OptimizationConfig:
    epochs: int = 300
    warmup: float = 40  # epochs of linear LR warmup from start_lr to lr
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: list[float] = field(default_factory=lambda: [0.996, 1.0])
    ipe_scale: float = 1.0  # schedules span ipe_scale x epochs x iterations-per-epoch steps
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    accum_steps: int = 1  # micro-batches per optimiser step
    fused_adamw: bool = True  # torch's fused AdamW kernel (one kernel for all parameters; CPU and CUDA); false: foreach
    skip_nonfinite_steps: int = 0  # skip up to N steps whose loss is not finite (else: stop at the first)
    # The global batch (images per optimiser step) the LRs were set for; the log compares it with the run's.
    reference_batch: int | None = None
    lr_scaling: str = "none"  # none | linear | sqrt: scale start_lr, lr, final_lr by global / reference batch
    allow_batch_change: bool = False  # resume a checkpoint written at another global batch (step converted)


@dataclass
class LoggingConfig:
    folder: str = "runs/ijepa"  # the run directory
    write_tag: str = "jepa"  # accepted for reference configs; names the TensorBoard run
    log_every: int = 10  # steps between host read-backs of the loss (log.csv, TensorBoard, progress bar)
    checkpoint_every: int = 10  # epochs between kept checkpoints (latest.pt is written every epoch)
    checkpoint_every_steps: int = 0  # also refresh latest.pt every N steps; 0 = off
    keep_last: int = 0  # periodic checkpoints kept (the newest); 0 = all
    tensorboard: bool = True
    progress_bar: bool = True
    monitor_every: int = 0  # epochs between kNN / RankMe checks of the target encoder (monitor.csv); 0 = off
    monitor_images: int = 2000  # the fixed labelled subset those checks use
    collapse_every: int = 100  # steps between collapse probes (and one at step 0); 0 = off
    collapse_images: int = 256  # the fixed batch the collapse probe encodes


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        """The config as YAML, sections and keys in their order here."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dump())


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
