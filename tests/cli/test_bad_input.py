"""Bad input through the real command line (issue 16): each case exits non-zero with one line
that names the problem, no traceback, and leaves every file that was there unchanged (and adds
none). Then the cases whose right answer is a behaviour, not an error."""

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import labelled_folder, signal_a_training_run, tiny_config
from openjepa.checkpoint import load_checkpoint
from openjepa.cli import main
from openjepa.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from openjepa.interop import export_encoder, load_encoder
from openjepa.pretrain import train


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a trained run, a config file, a user's own folder, a labelled folder, odd files."""
    root = tmp_path_factory.mktemp("ws")
    cfg = tiny_config(root / "run")
    train(cfg, max_steps=2)
    (root / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    raw = cfg.to_dict()
    raw["logging"]["folder"] = str(root / "new_run")
    (root / "new.yaml").write_text(yaml.safe_dump(raw))
    (root / "dup.yaml").write_text("data:\n  batch_size: 4\nmeta:\n  seed: 1\ndata:\n  batch_size: 8\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    mine = root / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "log.csv").write_text("a,b\n1,2\n")
    (root / "a_file").write_text("not a folder\n")
    other_tool = root / "other_tool"  # an empty checkpoints/ folder does not make a run
    (other_tool / "checkpoints").mkdir(parents=True)
    (other_tool / "config.yaml").write_text("theirs\n")
    labelled_folder(root / "two")
    one = root / "one"
    for split in ("train", "val"):
        (one / split / "only").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(one / split / "only" / f"{i}.png")
    garbage = root / "garbage_run"
    (garbage / "checkpoints").mkdir(parents=True)
    (garbage / "log.csv").write_bytes(b"\x00\xff\xfe garbage \x89PNG")
    (garbage / "config.yaml").write_text((root / "c.yaml").read_text())
    (root / "an_out_dir").mkdir()
    # issue 40: runs of one kind killed before their first checkpoint, unreadable data, odd files
    for name, kind, files in (
        ("pre_killed", "pretrain", ("config.yaml",)),
        ("ft_killed", "finetune", ("settings.yaml",)),
    ):
        (root / name / "checkpoints").mkdir(parents=True)
        (root / name / ".openjepa-run").write_text(f"openjepa run directory (openjepa 0.1.0)\nkind: {kind}\n")
        for file in files:
            (root / name / file).write_text("x: 1\n")
        (root / name / "log.csv").write_text("step,loss\n")
    broken = root / "broken"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (broken / split / cls).mkdir(parents=True)
            for i in range(3):
                (broken / split / cls / f"{i}.png").write_bytes(b"not a png")
    loose = root / "loose"
    labelled_folder(loose)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(loose / "train" / "stray.png")
    (root / "shards_dir").mkdir()
    export_encoder(root / "run/checkpoints/latest.pt", "safetensors", root / "exported")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"encoder": Evil()}, root / "evil.pt")
    return root


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# (id, arguments with {ws} for the workspace, words the one-line message must hold)
CASES = [
    # 1. a folder that is not a run is never written into
    ("train-into-users-folder", ["train", "{ws}/c.yaml", "logging.folder={ws}/mine"], "not an openjepa run"),
    (
        "train-into-another-tools-folder",
        ["train", "{ws}/c.yaml", "logging.folder={ws}/other_tool"],
        "not an openjepa run",
    ),
    ("train-folder-is-a-file", ["train", "{ws}/c.yaml", "logging.folder={ws}/a_file"], "is a file"),
    ("train-folder-under-a-file", ["train", "{ws}/c.yaml", "logging.folder={ws}/a_file/run"], "is a file"),
    # 2. submit
    ("submit-nodes-0", ["submit", "{ws}/c.yaml", "--nodes", "0"], "--nodes"),
    ("submit-nodes-negative", ["submit", "{ws}/c.yaml", "--nodes", "-1"], "--nodes"),
    ("submit-without-slurm", ["submit", "{ws}/new.yaml"], "no SLURM"),
    # 4, 5. configs
    ("lr-nan", ["train", "{ws}/new.yaml", "optimization.lr=.nan"], "optimization.lr must be a finite number"),
    ("lr-inf", ["train", "{ws}/new.yaml", "optimization.lr=.inf"], "optimization.lr must be a finite number"),
    ("ema-inf", ["train", "{ws}/new.yaml", "optimization.ema=[0.99, .inf]"], "finite"),
    ("comment-in-number", ["train", "{ws}/new.yaml", "optimization.lr=1e-3 #fast"], "comment"),
    ("duplicate-section", ["train", "{ws}/dup.yaml"], "'data' appears twice"),
    ("duplicate-key-in-override", ["train", "{ws}/new.yaml", "mask.options={a: 1, a: 2}"], "override 'mask.options="),
    (
        "infinite-mask-option",
        [
            "viz",
            "masks",
            "{ws}/c.yaml",
            "mask.strategy=block",
            "mask.options={target_aspect: [0.5, .inf]}",
            "--out",
            "{ws}/m.png",
        ],
        "target_aspect",
    ),
    # 6. silent wrong results
    ("eval-one-class", ["eval", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/one", "--no-progress"], "one class"),
    (
        "eval-linear-steps-negative",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--linear-steps", "-5"],
        "--linear-steps",
    ),
    ("viz-masks-n-negative", ["viz", "masks", "{ws}/c.yaml", "--n", "-3", "--out", "{ws}/m.png"], "--n"),
    ("train-max-steps-negative", ["train", "{ws}/new.yaml", "--max-steps", "-1"], "--max-steps"),
    # 8. tracebacks before
    ("viz-n-0", ["viz", "features", "{ws}/run/checkpoints/latest.pt", "--n", "0", "--out", "{ws}/f.png"], "--n"),
    ("report-n-0", ["report", "{ws}/run", "--n", "0"], "--n"),
    ("bench-steps-0", ["bench", "{ws}/c.yaml", "--steps", "0"], "--steps"),
    ("bench-loader-steps-0", ["bench", "{ws}/c.yaml", "--loader", "--steps", "0"], "--steps"),
    ("bench-workers-garbage", ["bench", "{ws}/c.yaml", "--loader", "--workers", "one"], "--workers"),
    ("bench-overhead-and-loader", ["bench", "{ws}/c.yaml", "--overhead", "--loader"], "give one"),
    ("bench-overhead-batches-reversed", ["bench", "{ws}/c.yaml", "--overhead", "--batches", "4,1"], "first smaller"),
    ("bench-overhead-batch-0", ["bench", "{ws}/c.yaml", "--overhead", "--batches", "0,4"], "of 1 or more"),
    ("bench-overhead-three-batches", ["bench", "{ws}/c.yaml", "--overhead", "--batches", "1,2,3"], "two batch sizes"),
    ("bench-overhead-dino", ["bench", "{ws}/c.yaml", "meta.objective=dino", "--overhead"], "not timed yet"),
    (
        "eval-attentive-epochs-0",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--attentive-epochs", "0"],
        "--attentive-epochs",
    ),
    ("eval-device-tpu", ["eval", "{ws}/run/checkpoints/latest.pt", "--device", "tpu"], "'tpu' is not a device"),
    ("eval-out-a-directory", ["eval", "{ws}/run/checkpoints/latest.pt", "--out", "{ws}/an_out_dir"], "is a directory"),
    ("eval-cache-dir-a-file", ["eval", "{ws}/run/checkpoints/latest.pt", "--cache-dir", "{ws}/a_file"], "is a file"),
    ("eval-out-under-a-file", ["eval", "{ws}/run/checkpoints/latest.pt", "--out", "{ws}/a_file/r.json"], "is a file"),
    (
        "viz-curves-garbage-log",
        ["viz", "curves", "{ws}/garbage_run", "--out", "{ws}/c.png"],
        "no rows of a training log",
    ),
    ("viz-curves-not-a-run", ["viz", "curves", "{ws}/mine/nothing", "--out", "{ws}/c.png"], "not found"),
    ("report-not-a-run", ["report", "{ws}/mine"], "a config must be a mapping"),
    ("report-no-folder", ["report", "{ws}/nowhere"], "run directory {ws}/nowhere not found"),
    # 10. messages that name the thing
    ("config-is-a-directory", ["train", "{ws}/mine"], "is a directory, not a YAML file"),
    ("config-is-binary", ["train", "{ws}/binary.yaml"], "binary.yaml is not UTF-8 text"),
    ("viz-out-a-directory", ["viz", "masks", "{ws}/c.yaml", "--out", "{ws}/an_out_dir"], "is a directory"),
    ("viz-out-not-png", ["viz", "masks", "{ws}/c.yaml", "--out", "{ws}/masks.jpg"], "ending in .png"),
    ("checkpoint-with-code", ["eval", "{ws}/evil.pt"], "could run code"),
    (
        "export-under-a-file",
        ["export", "{ws}/run/checkpoints/latest.pt", "--format", "safetensors", "--out", "{ws}/a_file/x"],
        "is a file",
    ),
    # issue 15: fine-tuning, embeddings, starting from a checkpoint
    (
        "finetune-one-class",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/one", "--out", "{ws}/ft"],
        "one class",
    ),
    (
        "finetune-unknown-setting",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/ft", "lr=1e-3"],
        "unknown finetune setting 'lr' (did you mean 'blr'?)",
    ),
    (
        "finetune-bad-setting",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/ft", "drop_path=1.5"],
        "drop_path must be in [0, 1)",
    ),
    (
        "finetune-labels-fraction-0",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--out", "{ws}/ft", "--labels-fraction", "0"],
        "--labels-fraction",
    ),
    (
        "finetune-into-users-folder",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/mine"],
        "not an openjepa run",
    ),
    (
        "finetune-into-a-pretraining-run",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/run"],
        "not a fine-tuning checkpoint",
    ),
    (
        "finetune-missing-checkpoint",
        ["finetune", "{ws}/nowhere.pt", "--data", "{ws}/two", "--out", "{ws}/ft"],
        "not found",
    ),
    (
        "embed-out-not-npz",
        ["embed", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/e.txt"],
        ".npz or .parquet",
    ),
    (
        "embed-no-folder",
        ["embed", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/nowhere", "--out", "{ws}/e.npz"],
        "not a folder",
    ),
    ("init-from-missing", ["train", "{ws}/new.yaml", "meta.init_from={ws}/nowhere.pt"], "meta.init_from"),
    (
        "init-from-other-width",
        ["train", "{ws}/new.yaml", "meta.init_from={ws}/run/checkpoints/latest.pt", "meta.pred_emb_dim=96"],
        "tensor predictor.",
    ),
    (
        "init-from-other-depth",
        ["train", "{ws}/new.yaml", "meta.init_from={ws}/run/checkpoints/latest.pt", "meta.pred_depth=2"],
        "predictor.predictor_blocks.1",
    ),
    (
        "init-from-twice",
        [
            "train",
            "{ws}/new.yaml",
            "meta.init_from={ws}/run/checkpoints/latest.pt",
            "meta.load_checkpoint=true",
            "meta.read_checkpoint=x.pt",
        ],
        "keep one",
    ),
    # issue 40, 1: no command writes over its own input, a checkpoint, or a run's own files
    (
        "eval-out-the-checkpoint",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--out", "{ws}/run/checkpoints/latest.pt"],
        "ending in .json",
    ),
    (
        "eval-out-into-checkpoints",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--out", "{ws}/run/checkpoints/r.json"],
        "is a file of the run",
    ),
    ("eval-out-a-checkpoint-name", ["eval", "{ws}/run/checkpoints/latest.pt", "--out", "{ws}/r.pt"], "ending in .json"),
    ("report-out-the-checkpoint", ["report", "{ws}/run", "--out", "{ws}/run/checkpoints/latest.pt"], "ending in .html"),
    ("report-out-the-config", ["report", "{ws}/run", "--out", "{ws}/run/config.yaml"], "ending in .html"),
    (
        "report-out-into-checkpoints",
        ["report", "{ws}/run", "--out", "{ws}/run/checkpoints/r.html"],
        "is a file of the run",
    ),
    (
        "viz-out-into-checkpoints",
        ["viz", "curves", "{ws}/run", "--out", "{ws}/run/checkpoints/c.png"],
        "is a file of the run",
    ),
    (
        "embed-out-the-checkpoint",
        ["embed", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/run/checkpoints/latest.pt"],
        ".npz or .parquet",
    ),
    # 2. one kind of run is never taken for another, with or without its checkpoints
    (
        "finetune-into-a-killed-pretraining-run",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--out", "{ws}/pre_killed"],
        "holds a pretraining run",
    ),
    (
        "train-into-a-killed-finetuning-run",
        ["train", "{ws}/new.yaml", "logging.folder={ws}/ft_killed"],
        "holds a fine-tuning run",
    ),
    # 3. training that cannot learn is refused before anything is written
    (
        "train-on-unreadable-images",
        ["train", "{ws}/new.yaml", "data.dataset=folder", "data.root_path={ws}/broken"],
        "none of the first 12 image(s) can be read",
    ),
    (
        "finetune-on-unreadable-images",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/broken", "--out", "{ws}/ft"],
        "can be read",
    ),
    # 6. options that do nothing are refused
    ("which-context-of-an-export", ["eval", "{ws}/exported", "--which", "context"], "holds one encoder"),
    (
        "export-which-context-of-an-export",
        ["export", "{ws}/exported", "--format", "safetensors", "--out", "{ws}/x", "--which", "context"],
        "holds one encoder",
    ),
    ("read-checkpoint-alone", ["train", "{ws}/new.yaml", "meta.read_checkpoint=x.pt"], "meta.load_checkpoint: true"),
    # 9. messages that name the problem
    ("checkpoint-is-a-png", ["eval", "{ws}/two/train/top/0.png"], "is a PNG image, not a PyTorch checkpoint"),
    ("checkpoint-is-json", ["eval", "{ws}/exported/encoder.json"], "is a JSON file, not a PyTorch checkpoint"),
    (
        "shards-root-a-folder",
        [
            "train",
            "{ws}/new.yaml",
            "data.dataset=webdataset",
            "data.root_path={ws}/shards_dir",
            "data.samples_per_epoch=8",
        ],
        "is a folder",
    ),
    (
        "export-out-a-file",
        ["export", "{ws}/run/checkpoints/latest.pt", "--format", "safetensors", "--out", "{ws}/a_file"],
        "is a file",
    ),
    (
        "resume-another-model",
        ["train", "{ws}/c.yaml", "meta.model_name=vit_small"],
        "trained with meta.model_name=vit_tiny",
    ),
    ("resume-another-patch", ["train", "{ws}/c.yaml", "mask.patch_size=8"], "trained with mask.patch_size=4"),
    ("loose-image-beside-classes", ["eval", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/loose"], "stray.png"),
    (
        "finetune-loose-image",
        ["finetune", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/loose", "--out", "{ws}/ft"],
        "beside its class folders",
    ),
    # issue 37: the scenes and the dense probes
    ("data-scenes-into-users-folder", ["data", "scenes", "--out", "{ws}/mine", "--n", "4"], "is not empty"),
    ("data-scenes-out-a-file", ["data", "scenes", "--out", "{ws}/a_file", "--n", "4"], "is a file"),
    ("data-scenes-size-4", ["data", "scenes", "--out", "{ws}/s", "--n", "4", "--size", "4"], "--size 4"),
    ("data-scenes-task-depth", ["data", "scenes", "--out", "{ws}/s", "--n", "4", "--task", "depth"], "--task"),
    ("data-scenes-n-0", ["data", "scenes", "--out", "{ws}/s", "--n", "0"], "--n"),
    ("eval-scenes-unknown-task", ["eval", "{ws}/run/checkpoints/latest.pt", "--data", "scenes:depth"], "count or dist"),
    (
        "eval-scenes-classes-without-task",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--data", "scenes", "--protocol", "linear"],
        "scenes:count or scenes:dist",
    ),
    (
        "eval-dense-on-class-data",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--data", "fashion_mnist", "--protocol", "seg"],
        "read --data scenes or a dense folder",
    ),
    (
        "eval-dense-on-a-class-folder",
        ["eval", "{ws}/run/checkpoints/latest.pt", "--data", "{ws}/two", "--protocol", "depth"],
        "has no images/ folder",
    ),
    ("train-scenes-task", ["train", "{ws}/new.yaml", "data.dataset=scenes", "data.scenes_task=depth"], "scenes_task"),
    # issue 39: the generative decoder
    ("imagine-no-run", ["imagine", "{ws}/nowhere", "--out", "{ws}/i.png"], "not found"),
    ("imagine-users-folder", ["imagine", "{ws}/mine", "--out", "{ws}/i.png"], "not a pretraining run directory"),
    ("imagine-out-not-png", ["imagine", "{ws}/run", "--out", "{ws}/i.jpg"], "ending in .png"),
    ("imagine-samples-0", ["imagine", "{ws}/run", "--out", "{ws}/i.png", "--samples", "0"], "--samples"),
    ("imagine-unknown-setting", ["imagine", "{ws}/run", "--out", "{ws}/i.png", "stepz=3"], "did you mean 'steps'"),
    ("imagine-bad-setting", ["imagine", "{ws}/run", "--out", "{ws}/i.png", "eta=2"], "eta"),
]


@pytest.mark.parametrize("case,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(ws, case, argv, message, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)  # no SLURM here, whatever the machine
    before = snapshot(ws)
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message.replace("{ws}", str(ws)) in lines[0], lines[0]
    assert "weights_only" not in err  # never advise loading a refused file with code execution on
    assert snapshot(ws) == before
    assert not (ws / "new_run").exists()


def test_an_internal_error_keeps_its_traceback(ws, monkeypatch):
    """A ValueError from inside torch or numpy is a bug to report, not the user's mistake."""

    def broken(*args, **kwargs):
        raise ValueError("something inside torch went wrong")

    monkeypatch.setattr("openjepa.bench.bench", broken)
    with pytest.raises(ValueError, match="inside torch"):
        main(["bench", str(ws / "c.yaml"), "--steps", "1"])


def test_a_run_directory_is_resumed_and_an_empty_folder_is_used(tmp_path):
    cfg = tiny_config(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    run = train(cfg, max_steps=1)
    assert (run / ".openjepa-run").is_file()
    train(cfg, max_steps=2)  # its own run: resumed
    assert load_checkpoint(run / "checkpoints/latest.pt")["step"] == 2
    old = tiny_config(tmp_path / "old")  # a run from before the marker: recognised by its checkpoint
    train(old, max_steps=1)
    (tmp_path / "old/.openjepa-run").unlink()
    train(old, max_steps=2)
    assert load_checkpoint(tmp_path / "old/checkpoints/latest.pt")["step"] == 2


def test_a_hash_in_a_string_override_is_kept():
    from openjepa.config import load_config

    cfg = load_config(None, ["logging.folder=/data/run #1", "mask.options={tag: '#x'}"])
    assert cfg.logging.folder == "/data/run #1" and cfg.mask.options == {"tag": "#x"}


def test_ctrl_c_saves_a_checkpoint_and_says_so_in_one_line(tmp_path):
    code, err, _ = signal_a_training_run(tmp_path, signal.SIGINT)
    assert code == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "SIGINT received" in err.splitlines()[-1], err
    step = load_checkpoint(tmp_path / "run/checkpoints/latest.pt")["step"]
    assert 2 <= step < 800
    assert f"saved at step {step}" in err.splitlines()[-1]


def test_eval_cache_follows_the_folders_contents(ws, tmp_path):
    """Rewriting the images of a folder (same names) gives new features, not the cached ones."""
    data = tmp_path / "data"
    labelled_folder(data)
    args = dict(protocols=["knn"], baselines=[], cache_dir=tmp_path / "cache", progress=False)
    from openjepa.evaluate import evaluate

    first = evaluate(ws / "run/checkpoints/latest.pt", str(data), out=tmp_path / "a.json", **args)
    for path in sorted((data / "train").rglob("*.png"))[::2]:  # half the training images become noise
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
    second = evaluate(ws / "run/checkpoints/latest.pt", str(data), out=tmp_path / "b.json", **args)
    caches = sorted((tmp_path / "cache").glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    assert len(caches) == 3  # train twice (its contents changed), test once
    assert first["train_size"] == second["train_size"] == 24


def test_small_training_sets_are_noted_not_silent(ws, tmp_path, capsys):
    data = tmp_path / "data"
    labelled_folder(data, n_per_class=6)
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                str(ws / "run/checkpoints/latest.pt"),
                "--data",
                str(data),
                "--protocol",
                "knn,lowshot",
                "--baselines",
                "",
                "--linear-steps",
                "20",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    knn = record["results"]["ijepa"]["knn"]
    assert "k=10" in knn and "k=20" not in knn and knn["skipped_k"] == [20, 100, 200]
    printed = capsys.readouterr().out
    assert "k=20, 100, 200 not reported: the training set has 12 images" in printed
    assert any("'1% labels' used 4 of 12 labels" in n for n in record["notes"])


def test_exported_files_are_readable_by_others_and_a_timm_folder_reads_back(ws, tmp_path):
    umask = os.umask(0o022)
    try:
        for fmt in ("hf", "timm", "safetensors"):
            out = export_encoder(ws / "run/checkpoints/latest.pt", fmt, tmp_path / fmt)
            modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
            assert set(modes.values()) == {0o644}, (fmt, modes)
    finally:
        os.umask(umask)
    ours, back = load_encoder(ws / "run/checkpoints/latest.pt"), load_encoder(tmp_path / "timm")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(ours(x), back(x)) and back.mean == ours.mean


def test_report_on_an_empty_or_garbage_log_says_so_and_still_writes(ws, tmp_path):
    from openjepa.viz import write_report

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((ws / "c.yaml").read_text())
    for content in (b"", b"\x00\xff garbage"):
        (run / "log.csv").write_bytes(content)
        page = write_report(run, n_images=2, bank_images=16).read_text()
        assert "no rows of a training log" in page


def test_yaml_anchors_and_merge_keys_still_load(tmp_path):
    from openjepa.config import load_config

    (tmp_path / "c.yaml").write_text("meta: &m\n  seed: 3\n  model_name: vit_tiny\n")
    (tmp_path / "m.yaml").write_text("meta:\n  <<: {seed: 3, model_name: vit_small}\n  model_name: vit_tiny\n")
    assert load_config(tmp_path / "c.yaml").meta.seed == 3
    cfg = load_config(tmp_path / "m.yaml")  # a key after the merge overrides it: not a duplicate
    assert (cfg.meta.seed, cfg.meta.model_name) == (3, "vit_tiny")


def test_a_log_cut_short_by_a_killed_write_still_draws(ws, tmp_path):
    from openjepa.viz import curves_png

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,loss\n1,0.5\n2,0.4\n3\n")
    assert curves_png(run)[:4] == b"\x89PNG"
    out = tmp_path / "new/folder/m.png"  # an --out in a folder that does not exist yet is made
    assert main(["viz", "masks", str(ws / "c.yaml"), "--out", str(out), "--n", "2"]) == 0 and out.exists()
