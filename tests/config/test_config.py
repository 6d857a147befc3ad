import re
from pathlib import Path

import pytest
import torch
import yaml

from openjepa.cli import main
from openjepa.config import Config, ConfigError, apply_overrides, load_config
from openjepa.ijepa import build_ijepa

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))

# The layout of the reference repository's configs (in1k_vith14_ep300.yaml and its three
# siblings): the same sections, keys and value types, with their placeholder paths.
REFERENCE_STYLE = """
data:
  batch_size: 128
  color_jitter_strength: 0.0
  crop_scale: [0.3, 1.0]
  crop_size: 224
  image_folder: imagenet_full_size/061417/
  num_workers: 10
  pin_mem: true
  root_path: $replace_this_with_absolute_path_to_your_datasets_directory
  use_color_distortion: false
  use_gaussian_blur: false
  use_horizontal_flip: false
logging:
  folder: $replace_this_with_path_for_experiment_logs/vith14.224-bs.2048-ep.300/
  write_tag: jepa
mask:
  allow_overlap: false
  aspect_ratio: [0.75, 1.5]
  enc_mask_scale: [0.85, 1.0]
  min_keep: 10
  num_enc_masks: 1
  num_pred_masks: 4
  patch_size: 14
  pred_mask_scale: [0.15, 0.2]
meta:
  copy_data: false
  load_checkpoint: false
  model_name: vit_huge
  pred_depth: 12
  pred_emb_dim: 384
  read_checkpoint: null
  use_bfloat16: true
optimization:
  ema: [0.996, 1.0]
  epochs: 300
  final_lr: 1.0e-06
  final_weight_decay: 0.4
  ipe_scale: 1.0
  lr: 0.001
  start_lr: 0.0002
  warmup: 40
  weight_decay: 0.04
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reference_config_loads_unchanged(tmp_path):
    cfg = load_config(write(tmp_path, REFERENCE_STYLE))
    assert cfg.meta.model_name == "vit_huge" and cfg.mask.patch_size == 14 and cfg.meta.pred_depth == 12
    assert cfg.optimization.warmup == 40.0 and isinstance(cfg.optimization.warmup, float)
    assert cfg.data.image_folder == "imagenet_full_size/061417/"


def test_unknown_keys_are_named_with_the_closest_valid_one(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown key in section 'optimization' 'warmpu' \(did you mean 'warmup'\?\)"
    ):
        load_config(write(tmp_path, "optimization:\n  warmpu: 10\n"))
    with pytest.raises(ConfigError, match=r"unknown config section 'optimisation' \(did you mean 'optimization'\?\)"):
        load_config(None, ["optimisation.lr=1"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.batch_size=big", "data.batch_size must be an integer"),
        ("meta.use_bfloat16=3", "must be true or false"),
        ("mask.pred_mask_scale=[0.2, 1.5]", "mask.pred_mask_scale must be"),
        ("mask.patch_size=15", "does not divide data.crop_size"),
        ("data.crop_scale=0.5", "data.crop_scale must be a list"),
        ("meta.model_name=vit_colossal", "meta.model_name 'vit_colossal' is not one of"),
        ("data.use_gaussian_blur=true", "I-JEPA uses no augmentation"),
        ("optimization.epochs=0", "optimization.epochs must be at least 1"),
        ("data.batch_size=0", "data.batch_size must be at least 1"),
        ("mask.strategy=checkerboard", "mask.strategy must be one of"),
        ("meta.loss=huber", "meta.loss must be one of"),
        ("meta.target_layers=0", "meta.target_layers must be a whole number from 1 to vit_base's 12 blocks"),
        ("meta.target_layers=13", "meta.target_layers must be a whole number from 1 to vit_base's 12 blocks"),
        ("lr=0.1", "not of the form section.key=value"),
        ("mask.bucket=-8", "mask.bucket must be a whole number of tokens from 0"),
        ("mask.bucket=196", "to 195, got 196"),
        ("mask.bucket=8.5", "mask.bucket must be an integer"),
        ("mask.bucket=true", "mask.bucket must be an integer"),
        ("mask.strategy=random", None),  # a control: fine alone
        ("meta.compile_mode=fast", "meta.compile_mode must be one of default, reduce-overhead"),
        ("meta.compile_mode=reduce-overhead", "does nothing without meta.compile: true"),
    ],
)
def test_bad_values_are_rejected_with_a_named_reason(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides",
    [["mask.bucket=8", "mask.strategy=random"], ["mask.bucket=8", "mask.reference_sampler=true"]],
)
def test_bucketing_is_refused_where_it_would_do_nothing(overrides):
    with pytest.raises(ConfigError, match="mask.bucket rounds the multiblock sampler's context lengths"):
        load_config(None, overrides)


def test_bucket_and_compile_mode_reach_the_sampler_and_torch_compile(monkeypatch):
    from openjepa.ijepa import build_ijepa
    from openjepa.masks import mask_sampler_for

    cfg = load_config(None, ["mask.bucket=8"])
    assert mask_sampler_for(cfg).bucket == 8
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    small = ["meta.model_name=vit_tiny", "data.crop_size=32", "mask.patch_size=8", "mask.min_keep=2"]
    build_ijepa(load_config(None, [*small, "meta.compile=true", "meta.compile_mode=reduce-overhead"]))
    assert modes and set(modes) == {"reduce-overhead"}


def test_multi_layer_targets_need_representation_targets():
    with pytest.raises(ConfigError, match="no meaning with meta.target: pixels"):
        load_config(None, ["meta.target_layers=4", "meta.target=pixels"])
    assert load_config(None, ["meta.target_layers=4"]).meta.target_layers == 4


def test_overrides_parse_yaml_values():
    cfg = apply_overrides(Config(), ["optimization.ema=[0.99, 1]", "meta.read_checkpoint=null", "data.mean=[0.5]"])
    assert cfg.optimization.ema == [0.99, 1.0] and cfg.meta.read_checkpoint is None and cfg.data.mean == [0.5]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_build(path):
    cfg = load_config(path)
    with torch.device("meta"):
        model = build_ijepa(cfg)
    assert model.encoder.grid == (cfg.data.crop_size // cfg.mask.patch_size,) * 2
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(write(tmp_path, REFERENCE_STYLE)), f"logging.folder={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data folder" in err and "not found" in err
    assert not run.exists()
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "train",
                str(write(tmp_path, REFERENCE_STYLE)),
                f"data.root_path={empty}",
                "data.image_folder=",
                f"logging.folder={run}",
            ]
        )
        == 2
    )
    assert "holds no images" in capsys.readouterr().err and not run.exists()
    assert main(["train", str(write(tmp_path, "meta:\n  modle_name: vit_base\n")), f"logging.folder={run}"]) == 2
    assert "did you mean 'model_name'" in capsys.readouterr().err and not run.exists()


def test_readme_config_reference_lists_exactly_the_config_keys():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("### Config reference") :].split("\n## ")[0]
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            section = None
            for name in re.findall(r"`([\w.]+)`", line.split("|")[1]):
                section, _, key = name.rpartition(".") if "." in name else (section, ".", name)
                documented.add(f"{section}.{key}")
    keys = {f"{section}.{key}" for section, values in Config().to_dict().items() for key in values}
    assert documented == keys


def test_bad_mask_options_exit_2_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        str(write(tmp_path, "data: {dataset: synthetic, crop_size: 32}\nmask: {patch_size: 4}\n")),
        f"logging.folder={run}",
    ]
    assert main(args + ["mask.strategy=random", "mask.options={target_ratio: 1.5}"]) == 2
    assert "target_ratio" in capsys.readouterr().err and not run.exists()
    assert main(args + ["mask.options={colour: red}"]) == 2
    assert "unexpected keyword argument 'colour'" in capsys.readouterr().err and not run.exists()


def test_float_keys_take_exponents_without_a_dot():
    """YAML 1.1 reads 1e-3 as a string; a float key still takes it (as the README's examples write it)."""
    cfg = load_config(None, ["optimization.lr=1e-3", "meta.sigreg_weight=5e-2"])
    assert cfg.optimization.lr == 1e-3 and cfg.meta.sigreg_weight == 0.05
    with pytest.raises(ConfigError, match="optimization.lr must be a number"):
        load_config(None, ["optimization.lr=fast"])
    with pytest.raises(ConfigError, match="data.batch_size must be an integer"):
        load_config(None, ["data.batch_size=1e3"])
