"""Downstream use (issue 15): fine-tuning (it learns, it resumes exactly, the recipe's parts), the
classifier's exports (Hugging Face and timm logits equal ours), starting a run from a checkpoint
(``meta.init_from``: bitwise the source's networks after a step at LR 0), and embeddings."""

import importlib
import json
import math
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from openjepa.checkpoint import load_checkpoint
from openjepa.cli import main
from openjepa.config import ConfigError
from openjepa.data import DataError
from openjepa.engine import Preempted, warmup_cosine
from openjepa.errors import EXIT_INTERRUPTED
from openjepa.evaluate.embed import embed
from openjepa.finetune import FinetuneConfig, finetune
from openjepa.interop import export_encoder, load_classifier, load_encoder, preprocess
from openjepa.models.heads import Classifier
from openjepa.models.vit import VisionTransformer
from openjepa.pretrain import train

ft_module = importlib.import_module("openjepa.finetune")


def three_splits(root, n=(48, 16, 16), size=16):
    """train/ val/ test/ of two classes told apart by their brightness (overlapping noise), so that a
    classifier has something to learn that survives pooling, and starts near chance."""
    rng = np.random.default_rng(1)
    for split, count in zip(("train", "val", "test"), n):
        for c, name in enumerate(("top", "bottom")):
            (root / split / name).mkdir(parents=True)
            for i in range(count // 2):
                img = np.clip(rng.normal(90 + 60 * c, 40, (size, size)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A pretrained checkpoint (two steps of the tiny config) and a labelled folder."""
    root = tmp_path_factory.mktemp("downstream")
    cfg = tiny_config(root / "pre", data={"in_chans": 1, "mean": [0.5], "std": [0.25]})
    train(cfg, max_steps=2)
    return root / "pre/checkpoints/latest.pt", three_splits(root / "data"), cfg


def settings(**kw):
    base = dict(
        epochs=4,
        batch_size=8,
        blr=4e-3,
        warmup_epochs=1.0,
        num_workers=0,
        eval_batch_size=64,
        precision="fp32",
        progress_bar=False,
        tensorboard=False,
        log_every=2,
        drop_path=0.1,
        head_init="zero",
    )
    return FinetuneConfig(**{**base, **kw})


def test_finetune_learns_and_keeps_the_best_epoch(source, tmp_path):
    ckpt, data, _ = source
    record = finetune(ckpt, tmp_path / "ft", str(data), settings(epochs=6))
    accs = [h["val_acc"] for h in record["history"]]
    assert len(accs) == 6 and max(accs) > accs[0] + 0.15, accs  # it learned beyond its first epoch
    assert record["val_acc"] == max(accs) and accs[record["best_epoch"] - 1] == max(accs)
    best = load_checkpoint(tmp_path / "ft/checkpoints/best.pt")
    assert best["epoch"] == record["best_epoch"] and "opt" not in best
    assert record["sizes"]["train_labelled"] == 48 and record["sizes"]["val"] == 16  # val/ picks, test/ is reported
    assert not record["sizes"]["val_held_out_of_train"]
    assert record["classes"] == ["bottom", "top"] and 0.5 < record["test_acc"] <= 1.0
    # the reported test accuracy is best.pt's, recomputed from the file
    model = load_classifier(tmp_path / "ft/checkpoints/best.pt")
    x = torch.stack([preprocess(Image.open(p), model.encoder)[0] for p in sorted((data / "test").rglob("*.png"))])
    y = torch.tensor([0 if p.parent.name == "bottom" else 1 for p in sorted((data / "test").rglob("*.png"))])
    with torch.no_grad():
        assert (model(x).argmax(-1) == y).float().mean().item() == pytest.approx(record["test_acc"], abs=1e-6)
    saved = json.loads((tmp_path / "ft/result.json").read_text())
    assert saved["settings"]["blr"] == 4e-3 and saved["source"]["checkpoint"] == str(ckpt)


def stop_then_resume(monkeypatch, when, run, run_dir):
    """``run()`` with SIGTERM raised while the training item at key (index, batch, epoch, position) ``when``
    picks is read; it must stop with Preempted. Returns ``run_dir``'s latest.pt; reading is real again after."""
    real = ft_module.Augmented.__getitem__

    def signalled(self, key):
        if when(key):
            signal.raise_signal(signal.SIGTERM)
        return real(self, key)

    with monkeypatch.context() as m:
        m.setattr(ft_module.Augmented, "__getitem__", signalled)
        with pytest.raises(Preempted):
            run()
    return load_checkpoint(run_dir / "checkpoints/latest.pt")


def test_finetune_resumes_exactly_after_an_interruption(source, tmp_path, monkeypatch):
    ckpt, data, _ = source
    ft = settings(epochs=3, mixup=0.4, cutmix=0.5, randaug="rand-m5-n1", drop_path=0.2)  # every random part on
    whole = finetune(ckpt, tmp_path / "whole", str(data), ft)
    # the same run, stopped by SIGTERM inside epoch 2, then started again
    stopped = stop_then_resume(
        monkeypatch,
        lambda key: key[2] == 1 and key[3] == ft.batch_size,  # epoch 2's 2nd batch
        lambda: finetune(ckpt, tmp_path / "cut", str(data), ft),
        tmp_path / "cut",
    )
    assert (stopped["epoch"], stopped["position"]) == (1, 2)  # epoch 2 (0-based 1) stopped after its second batch
    resumed = finetune(ckpt, tmp_path / "cut", str(data), ft)
    a, b = (load_checkpoint(tmp_path / run / "checkpoints/latest.pt")["model"] for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_acc"] for h in resumed["history"]] == [h["val_acc"] for h in whole["history"]]
    assert resumed["test_acc"] == whole["test_acc"]
    columns = lambda run: [line.split(",")[:5] for line in (tmp_path / run / "log.csv").read_text().splitlines()]  # noqa: E731
    assert columns("cut") == columns("whole")  # step, epoch, loss, train_acc, val_acc: the same rows


def test_finetune_stopped_on_an_epochs_last_step_resumes(source, tmp_path, monkeypatch):
    """One step an epoch (a low-shot run): the stop arrives on the epoch's last step, which finishes the
    epoch (validated, saved) before stopping; the same command then goes on."""
    ckpt, data, _ = source
    ft = settings(epochs=2, batch_size=64)
    whole = finetune(ckpt, tmp_path / "whole", str(data), ft)
    stopped = stop_then_resume(
        monkeypatch,
        lambda key: key[2:] == (0, 0),
        lambda: finetune(ckpt, tmp_path / "cut", str(data), ft),
        tmp_path / "cut",
    )
    assert (stopped["epoch"], stopped["position"], len(stopped["history"])) == (1, 0, 1)
    resumed = finetune(ckpt, tmp_path / "cut", str(data), ft)
    assert [h["val_acc"] for h in resumed["history"]] == [h["val_acc"] for h in whole["history"]]
    a, b = (load_checkpoint(tmp_path / run / "checkpoints/latest.pt")["model"] for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_on_a_datasetdict_and_unlabelled_items(source, tmp_path):
    datasets = pytest.importorskip("datasets")
    ckpt, data, _ = source

    def split(name, unlabelled=0):
        files = sorted((data / name).rglob("*.png"))
        labels = [0 if f.parent.name == "bottom" else 1 for f in files]
        labels[:unlabelled] = [-1] * unlabelled
        feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": labels}, features=feats)

    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": split("train", unlabelled=3), "validation": split("val"), "test": split("test")}
    ).save_to_disk(str(folder))
    record = finetune(ckpt, tmp_path / "hf", str(folder), settings(epochs=1))
    sizes = record["sizes"]
    assert not sizes["val_held_out_of_train"] and sizes["val"] == 16 and sizes["test_scored"] == 16
    assert sizes["train_labelled"] == 45 and sizes["train_unlabelled_left_out"] == 3
    bad = tmp_path / "dd_bad"  # a test split without labels cannot be scored: refused before any run folder
    datasets.DatasetDict(
        {"train": split("train"), "validation": split("val"), "test": split("test", unlabelled=16)}
    ).save_to_disk(str(bad))
    with pytest.raises(DataError, match="test split has 16 unlabelled"):
        finetune(ckpt, tmp_path / "never", str(bad), settings(epochs=1))
    assert not (tmp_path / "never").exists()


def test_finetune_low_shot_holds_out_validation_and_random_init(source, tmp_path):
    ckpt, data, _ = source
    folder = tmp_path / "tv"  # train/ and val/ only: validation is carved out of train/, val/ is the test
    for split in ("train", "val"):
        shutil.copytree(data / split, folder / split)
    record = finetune(ckpt, tmp_path / "ls", str(folder), settings(epochs=1, labels_fraction=0.5, random_init=True))
    # half of the 48 labels (12 a class), and the validation split carved out of those: 10% a class, rounded
    assert record["sizes"]["val_held_out_of_train"] and record["sizes"]["val"] == 2
    assert record["sizes"]["train_labelled"] == 22
    assert record["source"]["random_init"]
    model = load_classifier(tmp_path / "ls/checkpoints/best.pt")
    pretrained = load_encoder(ckpt)
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, pretrained.blocks[0].attn.qkv.weight)


def test_layer_decay_and_schedule(source):
    ckpt, _, _ = source
    model = Classifier(load_encoder(ckpt), ["a", "b", "c"])
    groups = ft_module.param_groups(model, 0.05, 0.5)
    depth = len(model.encoder.blocks)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert scale[id(model.encoder.patch_embed.proj.weight)] == (0.5 ** (depth + 1), 0.05)
    assert scale[id(model.encoder.blocks[0].attn.qkv.weight)] == (0.5**depth, 0.05)
    assert scale[id(model.encoder.blocks[0].attn.qkv.bias)] == (0.5**depth, 0.0)
    assert scale[id(model.head.weight)] == (1.0, 0.05) and scale[id(model.encoder.norm.weight)] == (1.0, 0.0)
    assert len(scale) == len(list(model.parameters()))
    # fine-tuning's LR is the engine's one warmup + cosine, evaluated after the step as every loop does
    lrs = [warmup_cosine(s + 1, 0.0, 1.0, 0.0, 10, 100) for s in range(100)]
    assert (
        lrs[0] == pytest.approx(0.1)
        and lrs[9] == 1.0
        and lrs[-2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    )
    assert lrs[-1] == 0.0  # the last step reaches min_lr


def test_drop_path_is_identity_when_off_and_unbiased_when_on():
    torch.manual_seed(0)
    enc = VisionTransformer(16, 4, 1, 32, 2, 2)
    x = torch.randn(512, 1, 16, 16)
    enc.train()
    state = torch.get_rng_state()
    plain = enc(x)
    assert torch.equal(torch.get_rng_state(), state)  # rate 0 draws nothing: pretraining's stream unchanged
    enc.set_drop_path(0.5)
    assert [b.drop_rate for b in enc.blocks] == [0.0, 0.5]
    dropped = enc(x)
    assert not torch.allclose(dropped, plain)
    enc.eval()
    assert torch.equal(enc(x), plain)  # evaluation ignores it
    from openjepa.models.vit import drop_path

    ones = torch.ones(20000, 3)
    out = drop_path(ones, 0.3, True)
    assert out[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert out.mean().item() == pytest.approx(1.0, abs=0.03) and torch.equal(out[:, 0], out[:, 2])


@pytest.fixture(scope="module")
def finetuned(source, tmp_path_factory):
    ckpt, data, _ = source
    out = tmp_path_factory.mktemp("ftc") / "run"
    finetune(ckpt, out, str(data), settings(epochs=1, head_init="probe"))
    return out / "checkpoints/best.pt", data


def test_probe_head_folds_the_standardisation_into_the_linear_head(source):
    ckpt, data, _ = source
    ft = settings()
    splits = ft_module.make_splits(str(data), 1, None, ft)
    model = Classifier(load_encoder(ckpt), splits.classes)
    probe = ft_module.probe_head(model, splits, ft, "fp32")
    fp32 = torch.autocast("cpu", enabled=False)
    acc, n, _ = ft_module.accuracy_on(model, splits.val, torch.device("cpu"), fp32)
    assert n == 16 and acc == pytest.approx(probe["val_acc"]) and acc >= 0.75  # the folded head is the probe


def test_hf_classifier_export_matches_our_logits(finetuned, tmp_path):
    transformers = pytest.importorskip("transformers")
    best, _ = finetuned
    ours = load_classifier(best)
    export_encoder(best, "hf", tmp_path / "hf")
    hf = transformers.IJepaForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label == {0: "bottom", 1: "top"}
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=x).logits, ours(x), atol=1e-4)
    back = load_classifier(tmp_path / "hf")  # and the folder reads back as ours
    assert back.classes == ["bottom", "top"] and back.mean == ours.mean
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-5)


def test_timm_and_safetensors_classifier_exports(finetuned, tmp_path):
    best, _ = finetuned
    ours = load_classifier(best)
    x = torch.randn(3, 1, 16, 16)
    export_encoder(best, "timm", tmp_path / "timm")
    export_encoder(best, "safetensors", tmp_path / "st")
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    info = json.loads((tmp_path / "timm/timm.json").read_text())
    model = timm.create_model(info["architecture"], pretrained=False, **info["kwargs"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "timm/model.safetensors")))
    with torch.no_grad():
        expected = ours(x)
        assert torch.allclose(model(x), expected, atol=1e-4)
        for folder in ("timm", "st"):
            assert torch.allclose(load_classifier(tmp_path / folder)(x), expected, atol=1e-5)
    assert load_encoder(tmp_path / "st").config() == ours.encoder.config()  # encoder-only readers still work


def test_attentive_head_trains_and_refuses_hf(source, tmp_path):
    ckpt, data, _ = source
    finetune(ckpt, tmp_path / "att", str(data), settings(epochs=1, head="attentive"))
    best = tmp_path / "att/checkpoints/best.pt"
    model = load_classifier(best)
    assert model.head_type == "attentive" and model(torch.randn(2, 1, 16, 16)).shape == (2, 2)
    with pytest.raises(Exception, match="attentive-pooling head"):
        export_encoder(best, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# --------------------------------------------------------------------------- init_from


def _networks(path):
    state = load_checkpoint(path)
    return {key: state[key] for key in ("encoder", "target_encoder", "predictor")}


def _frozen(folder, **meta):
    """A config whose one step changes nothing: LR 0 and EMA momentum 1."""
    return tiny_config(
        folder,
        data={"in_chans": 1, "mean": [0.5], "std": [0.25]},
        meta=meta,
        optimization={"start_lr": 0.0, "lr": 0.0, "final_lr": 0.0, "ema": [1.0, 1.0]},
    )


def test_init_from_ours_is_bitwise_after_a_step_at_lr_0_and_resume_ignores_it(source, tmp_path, caplog):
    ckpt, _, _ = source
    train(_frozen(tmp_path / "a", init_from=str(ckpt)), max_steps=1)
    src, got = _networks(ckpt), _networks(tmp_path / "a/checkpoints/latest.pt")
    for net in src:
        assert src[net].keys() == got[net].keys() and all(torch.equal(src[net][k], got[net][k]) for k in src[net]), net
    assert "initialised from" in (tmp_path / "a/train.log").read_text()
    # started again, the run resumes its own checkpoint: init_from (now a missing file) is not read
    train(_frozen(tmp_path / "a", init_from=str(tmp_path / "gone.pt")), max_steps=2)
    assert load_checkpoint(tmp_path / "a/checkpoints/latest.pt")["step"] == 2


def test_init_from_a_reference_file_by_its_reference_spelling(source, tmp_path):
    ckpt, _, _ = source
    src = _networks(ckpt)
    torch.manual_seed(3)
    ref = {
        net: {
            f"module.{k}": v + 0.01 * torch.randn_like(v) if v.is_floating_point() and "pos_embed" not in k else v
            for k, v in state.items()
        }
        for net, state in src.items()
    }  # three different networks
    run = tmp_path / "b"
    run.mkdir()
    torch.save({**ref, "epoch": 7, "opt": {}, "lr": 0.1}, run / "jepa-ep7.pth.tar")  # the reference's layout
    train(_frozen(run, load_checkpoint=True, read_checkpoint="jepa-ep7.pth.tar"), max_steps=1)
    got = _networks(run / "checkpoints/latest.pt")
    for net in ref:
        assert all(torch.equal(ref[net][f"module.{k}"], got[net][k]) for k in got[net]), net
    assert load_checkpoint(run / "checkpoints/latest.pt")["step"] == 1  # new schedules: not the reference's epoch 7


def test_init_from_an_exported_encoder_interpolates_positions(source, tmp_path):
    ckpt, _, _ = source
    export_encoder(ckpt, "hf", tmp_path / "hf")
    cfg = _frozen(tmp_path / "c", init_from=str(tmp_path / "hf"))
    cfg.data.crop_size = 24  # a 6x6 grid from the 4x4 one
    train(cfg, max_steps=1)
    got, enc = _networks(tmp_path / "c/checkpoints/latest.pt"), load_encoder(ckpt)
    assert torch.equal(got["encoder"]["blocks.0.attn.qkv.weight"], enc.blocks[0].attn.qkv.weight)
    assert torch.equal(got["target_encoder"]["blocks.0.attn.qkv.weight"], enc.blocks[0].attn.qkv.weight)
    assert torch.allclose(got["encoder"]["pos_embed"], enc.pos_embed_for((6, 6)))
    assert "fresh predictor" in (tmp_path / "c/train.log").read_text()


def test_init_from_another_size_names_the_tensor_and_writes_nothing(source, tmp_path):
    ckpt, _, _ = source
    with pytest.raises(ConfigError, match=r"tensor encoder\.patch_embed\.proj\.weight"):
        train(tiny_config(tmp_path / "d", meta={"init_from": str(ckpt)}), max_steps=1)  # 3 channels, not 1
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- embed


def test_embed_writes_one_row_per_readable_image(source, tmp_path):
    ckpt, _, _ = source
    folder = tmp_path / "imgs"
    (folder / "a" / "deep").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [(16, 16), (30, 20), (9, 40)]
    for i, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / ("a/deep" if i else "a") / f"{i}.png")
    (folder / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "e.npz"
    summary = embed(ckpt, folder, out, progress=False, precision="fp32")
    z = np.load(out)
    assert summary["images"] == 3 and summary["skipped"] == 1
    assert list(z["paths"]) == ["a/0.png", "a/deep/1.png", "a/deep/2.png"] and list(z["skipped"]) == ["a/broken.jpg"]
    enc = load_encoder(ckpt)
    with torch.no_grad():
        expected = enc.pooled(preprocess([Image.open(folder / p) for p in z["paths"]], enc)).numpy()
    np.testing.assert_allclose(z["features"], expected, atol=1e-5)
    pq = pytest.importorskip("pyarrow.parquet")
    assert (
        main(
            [
                "embed",
                str(ckpt),
                "--data",
                str(folder),
                "--out",
                str(tmp_path / "e.parquet"),
                "--pooling",
                "last4",
                "--no-progress",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column("path").to_pylist() == list(z["paths"])
    assert np.asarray(table.column("embedding").to_pylist()).shape == (3, 4 * enc.embed_dim)
    assert (tmp_path / "e.parquet.skipped.txt").read_text() == "a/broken.jpg\n"


def test_finetune_cli_ctrl_c_saves_and_resumes(source, tmp_path, monkeypatch, capsys):
    ckpt, data, _ = source
    real = ft_module.Augmented.__getitem__
    calls = {"n": 0}

    def interrupted(self, key):
        calls["n"] += 1
        if calls["n"] == 9:
            signal.raise_signal(signal.SIGINT)
        return real(self, key)

    monkeypatch.setattr(ft_module.Augmented, "__getitem__", interrupted)
    argv = [
        "finetune",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "1",
        "--no-progress",
        "batch_size=8",
        "num_workers=0",
        "precision=fp32",
        "tensorboard=false",
    ]
    assert main(argv) == EXIT_INTERRUPTED
    assert "rerun to resume" in capsys.readouterr().err
    monkeypatch.setattr(ft_module.Augmented, "__getitem__", real)
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_finetune_skips_and_counts_unreadable_images(source, tmp_path):
    ckpt, data, _ = source
    folder = tmp_path / "d"
    shutil.copytree(data, folder)
    for split in ("train", "test"):
        (folder / split / "top" / "broken.png").write_bytes(b"\x89PNG truncated")
    record = finetune(ckpt, tmp_path / "ft", str(folder), settings(epochs=1))
    assert record["skipped"]["train_count"] == 1 and record["skipped"]["train"][0].endswith("broken.png")
    assert record["skipped"]["test_count"] == 1 and record["sizes"]["test_scored"] == 16
