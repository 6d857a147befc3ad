"""DINO, the view-invariance baseline (meta.objective: dino): its loss, centre, temperatures and
teacher against the paper; its augmentations; its runs on the engine, their resume, and their
checkpoints through evaluation, export and the report."""

import csv
import math

import pytest
import torch

from conftest import labelled_folder, tiny_config
from openjepa.checkpoint import CheckpointError, load_checkpoint
from openjepa.config import ConfigError, apply_overrides, validate
from openjepa.data import NumberedDataset, SyntheticDataset
from openjepa.data.augment import (
    LUMA,
    MultiCropTransform,
    ViewRecipe,
    adjust_hue,
    adjust_saturation,
    augment_view,
    gaussian_blur,
    grayscale,
    hflip,
    jitter,
    local_crop_size,
    solarize,
)
from openjepa.data.seeds import DINO_VIEWS, generator_for
from openjepa.dino import CENTER_MOMENTUM, DINOHead, build_dino, dino_loss
from openjepa.pretrain import param_groups, train

HEAD = {"objective": "dino", "dino_out_dim": 32, "dino_hidden": 32}


def dino_config(folder, meta=None, **sections):
    """``tiny_config`` with DINO's objective and a small head; two local views of 8 px."""
    return tiny_config(folder, meta={**HEAD, "dino_local_crops": 2, **(meta or {})}, **sections)


def read_log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# The loss, the centre, the temperatures and the teacher, against the paper.


def softmax(xs):
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("n_local", [0, 3])
def test_loss_is_the_cross_entropy_of_every_teacher_view_against_every_other_student_view(n_local):
    g = torch.Generator().manual_seed(0)
    B, K, tt, ts = 3, 5, 0.04, 0.1
    student = [torch.randn(B, K, generator=g) for _ in range(2 + n_local)]
    teacher = [torch.randn(B, K, generator=g) for _ in range(2)]
    center = torch.randn(1, K, generator=g)
    terms = []
    for i in range(2):  # written from the paper's formulas, number by number
        for v in range(2 + n_local):
            if v == i:
                continue
            per_image = []
            for b in range(B):
                q = softmax([(teacher[i][b, k] - center[0, k]).item() / tt for k in range(K)])
                p = softmax([student[v][b, k].item() / ts for k in range(K)])
                per_image.append(-sum(q[k] * math.log(p[k]) for k in range(K)))
            terms.append(sum(per_image) / B)
    assert len(terms) == 2 * (2 + n_local) - 2
    assert dino_loss(student, teacher, center, tt, ts).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_a_student_view_is_never_compared_with_the_teacher_on_itself():
    K = 4
    sure = torch.tensor([[10.0, 0, 0, 0]])  # teacher and student agree on view 0, differ elsewhere
    other = torch.tensor([[0, 10.0, 0, 0]])
    center = torch.zeros(1, K)
    same_pairs = dino_loss([sure, other], [sure, other], center, 0.04)  # only the crossed pairs count: high
    crossed = dino_loss([other, sure], [sure, other], center, 0.04)  # the crossed pairs agree: low
    assert same_pairs.item() > 50 and crossed.item() < 1e-3


def tiny_dino(tmp_path, total_steps=0, **meta):
    torch.manual_seed(0)
    return build_dino(dino_config(tmp_path, meta=meta), total_steps)


def views(batch=4, channels=3, size=16, local=8, n_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 2, channels, size, size, generator=g),
        torch.randn(batch, n_local, channels, local, local, generator=g),
    )


def test_the_centre_is_an_ema_of_the_teachers_mean_output(tmp_path):
    model = tiny_dino(tmp_path)
    expected = torch.zeros(1, 32)
    for seed in range(3):
        images, local = views(seed=seed)
        _, teacher = model.forward_teacher(images.transpose(0, 1).flatten(0, 1))
        expected = CENTER_MOMENTUM * expected + (1 - CENTER_MOMENTUM) * teacher.mean(0, keepdim=True)
        model(images, local)
        torch.testing.assert_close(model.center, expected)


def test_without_local_views_the_student_answers_each_global_view_with_the_other(tmp_path):
    model = tiny_dino(tmp_path, dino_local_crops=0)
    images, local = views(n_local=0)
    flat = images.transpose(0, 1).flatten(0, 1)
    _, teacher = model.forward_teacher(flat)
    student = model.forward_student(flat, None)
    expected = dino_loss(list(student.split(4)), list(teacher.split(4)), torch.zeros(1, 32), model.teacher_temp_at(0))
    torch.testing.assert_close(model(images, local), expected)


def test_the_teachers_temperature_warms_up_then_stays(tmp_path):
    model = tiny_dino(tmp_path, total_steps=100)  # meta.dino_teacher_temp_warmup 0.3: 30 steps
    temps = [model.teacher_temp_at(s) for s in (0, 15, 30, 31, 99)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07])
    assert tiny_dino(tmp_path, total_steps=100, dino_teacher_temp_warmup=0.0).teacher_temp_at(0) == 0.07


def test_the_teacher_takes_no_gradient_and_is_the_ema_of_the_student(tmp_path):
    model = tiny_dino(tmp_path)
    student = [*model.encoder.parameters(), *model.head.parameters()]
    teacher = [*model.target_encoder.parameters(), *model.target_head.parameters()]
    assert all(torch.equal(s, t) for s, t in zip(student, teacher))  # the teacher starts as a copy
    model(*views()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher)
    assert all(p.grad is not None for p in student)
    optimizer = torch.optim.AdamW(param_groups(model), lr=1e-2)
    optimizer.step()
    before = [t.clone() for t in teacher]
    model.update_target(0.9)
    for s, t, old in zip(student, teacher, before):
        torch.testing.assert_close(t, 0.9 * old + 0.1 * s)
    assert not all(torch.equal(s, t) for s, t in zip(student, teacher))


def test_the_optimiser_trains_the_student_with_decay_on_matrices_only(tmp_path):
    model = tiny_dino(tmp_path)
    decay, no_decay = param_groups(model)
    trained = {id(p) for p in [*model.encoder.parameters(), *model.head.parameters()]}
    assert {id(p) for p in decay["params"] + no_decay["params"]} == trained
    assert any(p is model.head.prototypes for p in decay["params"])  # the weight-normed layer's direction
    assert all(p.ndim == 1 for p in no_decay["params"])


def test_i_jepas_optimiser_groups_are_as_before(tmp_path):
    from openjepa.ijepa import build_ijepa

    model = build_ijepa(tiny_config(tmp_path))
    before = [p for module in (model.encoder, model.predictor) for p in module.parameters()]
    groups = param_groups(model)
    assert [p for g in groups for p in g["params"]] == [p for p in before if p.ndim > 1] + [
        p for p in before if p.ndim == 1
    ]


def test_the_encoder_takes_the_local_views_smaller_grid(tmp_path):
    model = tiny_dino(tmp_path)
    assert model.encoder(torch.randn(2, 3, 8, 8)).shape == (2, 4, model.encoder.embed_dim)
    assert local_crop_size(224, 16) == 96 and local_crop_size(16, 4) == 8 and local_crop_size(8, 4) == 4


# The augmentations.


def test_views_are_a_pure_function_of_seed_batch_and_index():
    transform = MultiCropTransform(16, 8, 2)
    dataset = NumberedDataset(SyntheticDataset(8, 20, 3), transform, seed=5)
    (g, loc), batch = dataset[(3, 7)]
    assert batch == 7 and g.shape == (2, 3, 16, 16) and loc.shape == (2, 3, 8, 8)
    again, _ = dataset[(3, 7)]
    assert torch.equal(g, again[0]) and torch.equal(loc, again[1])
    own = transform(SyntheticDataset(8, 20, 3)[3][0], generator_for(5, DINO_VIEWS, 7, 3))  # DINO's own stream
    assert torch.equal(g, own[0]) and torch.equal(loc, own[1])
    assert not torch.equal(g, dataset[(3, 8)][0][0]) and not torch.equal(g, dataset[(4, 7)][0][0])
    assert not torch.equal(g[0], g[1])  # two different views of one image


def test_flip_mirrors_and_grayscale_equalises_the_channels():
    img = torch.rand(3, 5, 6)
    assert torch.equal(hflip(img)[..., 0], img[..., -1]) and torch.equal(hflip(hflip(img)), img)
    grey = grayscale(img)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    torch.testing.assert_close(grey[0], sum(w * c for w, c in zip(LUMA, img)))
    torch.testing.assert_close(adjust_saturation(img, 0.0), grey)


def test_solarisation_inverts_at_and_above_the_threshold_only():
    img = torch.tensor([[[0.0, 0.2, 0.49, 0.5, 0.8, 1.0]]])
    torch.testing.assert_close(solarize(img), torch.tensor([[[0.0, 0.2, 0.49, 0.5, 0.2, 0.0]]]))


def test_jitter_keeps_values_in_range_and_hue_turns_colours_round():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 8, 8, generator=g) ** 3  # saturated and dark colours, some near 1
    for extreme in (torch.zeros(4), torch.ones(4), torch.rand(4, generator=g)):
        for order in (torch.arange(4), torch.arange(4).flip(0)):
            out = jitter(img, order, extreme)
            assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(adjust_hue(img, 0.0), img)
    torch.testing.assert_close(adjust_hue(adjust_hue(img, 0.3), -0.3), img, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1))  # red -> green


def test_blur_smooths_and_keeps_a_flat_image_flat():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 16, 16, generator=g)
    assert gaussian_blur(noise, 2.0, 5).std() < 0.6 * noise.std()
    torch.testing.assert_close(gaussian_blur(torch.full((3, 8, 8), 0.3), 1.0, 3), torch.full((3, 8, 8), 0.3))


def test_grey_images_stay_grey():
    recipe = ViewRecipe(8, (0.4, 1.0), blur_p=0.5, solarize_p=0.5)
    grey3 = torch.rand(1, 12, 12).expand(3, 12, 12).clone()
    for i in range(20):  # every op, each drawn often enough
        view = augment_view(grey3, recipe, generator_for(0, DINO_VIEWS, 0, i))
        torch.testing.assert_close(view[0], view[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(view[1], view[2], atol=1e-6, rtol=0)
    g, loc = MultiCropTransform(16, 8, 2, [0.5], [0.25])(torch.rand(1, 20, 20), generator_for(0, DINO_VIEWS, 0, 0))
    assert g.shape == (2, 1, 16, 16) and loc.shape == (2, 1, 8, 8)


def test_each_view_kind_is_blurred_and_solarised_as_often_as_the_paper_says(monkeypatch):
    import openjepa.data.augment as augment

    calls = []
    monkeypatch.setattr(augment, "gaussian_blur", lambda img, *a: calls.append(("blur", img.size(-1))) or img)
    monkeypatch.setattr(augment, "solarize", lambda img: calls.append(("solarize", img.size(-1))) or img)
    transform = MultiCropTransform(16, 8, 1)
    counts = {}
    for i in range(300):
        calls.clear()
        transform(torch.rand(3, 16, 16), generator_for(1, DINO_VIEWS, 0, i))
        for key in calls:
            counts[key] = counts.get(key, 0) + 1
    # the first global view always blurred, the second one time in ten; local views half the time
    assert counts[("blur", 16)] == pytest.approx(300 * 1.1, abs=15)
    assert counts[("blur", 8)] == pytest.approx(300 * 0.5, abs=30)
    assert counts[("solarize", 16)] == pytest.approx(300 * 0.2, abs=20) and ("solarize", 8) not in counts


# The config.


@pytest.mark.parametrize(
    "override, message",
    [
        ("meta.objective=byol", "meta.objective must be one of ijepa, dino, got 'byol'"),
        ("meta.dino_local_crops=-1", "meta.dino_local_crops must be >= 0"),
        ("meta.dino_local_size=6", "meta.dino_local_size must be a multiple of mask.patch_size 4"),
        ("meta.dino_teacher_temp_warmup=1.5", "meta.dino_teacher_temp_warmup is a fraction"),
        ("meta.target=pixels", "meta.target is an I-JEPA setting that meta.objective: dino does not use"),
        ("meta.fsdp=true", "meta.fsdp is not supported with meta.objective: dino yet"),
    ],
)
def test_bad_dino_settings_are_one_line_config_errors(tmp_path, override, message):
    cfg = dino_config(tmp_path)
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")) as err:
        validate(apply_overrides(cfg, [override]))
    assert "\n" not in str(err.value)


def test_dino_settings_are_refused_beside_ijepa(tmp_path):
    with pytest.raises(ConfigError, match="meta.dino_out_dim is a setting of meta.objective: dino"):
        tiny_config(tmp_path, meta={"dino_out_dim": 64})
    with pytest.raises(ConfigError, match="meta.dino_head_bn is a setting of meta.objective: dino"):
        tiny_config(tmp_path, meta={"dino_head_bn": True})
    assert tiny_config(tmp_path).meta.objective == "ijepa"


def test_the_head_batch_norm_spreads_a_centred_teacher_over_images_whose_features_barely_differ():
    """A fresh ViT's pooled features of small grey images differ by about 1% between images: the
    plain head's centred, sharpened output is then uniform (loss ln K, no signal) and the normed
    head's is not. The plain head keeps its state keys (checkpoints of earlier runs load)."""
    torch.manual_seed(0)
    x = torch.randn(1, 64) + 0.01 * torch.randn(32, 64)
    plain, normed = DINOHead(64, 256, 128), DINOHead(64, 256, 128, batch_norm=True)
    linears = [[m for m in head.mlp if isinstance(m, torch.nn.Linear)] for head in (plain, normed)]
    for a, b in zip(*linears):  # the same linear layers and prototypes
        b.load_state_dict(a.state_dict())
    normed.prototypes.data.copy_(plain.prototypes)

    def teacher_entropy(head):
        with torch.no_grad():
            logits = head(x)
        p = torch.softmax((logits - logits.mean(0)) / 0.04, dim=-1)
        return float(-(p * p.log()).sum(-1).mean())

    assert teacher_entropy(plain) > math.log(256) - 0.01
    assert teacher_entropy(normed) < math.log(256) - 0.5
    assert [k for k in plain.state_dict() if k.startswith("mlp")] == [
        f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in normed.mlp) == 2


# Runs on the engine.


def test_a_short_dino_run_lowers_its_loss(tmp_path):
    """Over its first steps the student learns to match its teacher and the loss falls, while the
    teacher's features keep their spread. (Then the centre catches up with the teacher's mean
    output and the loss climbs towards log K: learning image features takes DINO's long schedule,
    a benchmark's run rather than a test's.)"""
    cfg = dino_config(
        tmp_path,
        meta={"dino_out_dim": 64, "dino_hidden": 64, "dino_teacher_temp": 0.04},
        data={"synthetic_size": 240, "batch_size": 16},
        optimization={"lr": 2e-3, "ema": [0.99, 1.0]},
        logging={"log_every": 2, "collapse_every": 6},
    )
    train(cfg, max_steps=6)
    rows = read_log(tmp_path)
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.7 * losses[0]
    assert float(rows[-1]["target_std"]) > 0.8 * float(rows[0]["target_std"])
    assert float(rows[-1]["image_spread"]) > 0.5 * float(rows[0]["image_spread"])  # not collapsed


def test_a_dino_run_resumes_bitwise(tmp_path):
    settings = {"data": {"synthetic_size": 32, "batch_size": 8}, "logging": {"collapse_every": 2, "log_every": 2}}
    straight = dino_config(tmp_path / "straight", **settings)
    train(straight)
    interrupted = dino_config(tmp_path / "interrupted", **settings)
    train(interrupted, max_steps=3)  # stops mid-epoch (4 steps per epoch)
    assert load_checkpoint(tmp_path / "interrupted/checkpoints/latest.pt")["step"] == 3
    train(interrupted)
    a = load_checkpoint(tmp_path / "straight/checkpoints/latest.pt")
    b = load_checkpoint(tmp_path / "interrupted/checkpoints/latest.pt")
    assert a["step"] == b["step"] == 8 and "predictor" not in a
    for key in ("encoder", "target_encoder"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    for net in ("student", "teacher"):
        for name, value in a["dino_heads"][net].items():
            assert torch.equal(value, b["dino_heads"][net][name]), f"{net} head {name} differs after resume"
    assert torch.equal(a["dino_center"], b["dino_center"]) and a["dino_center"].abs().sum() > 0
    rows = {r["step"]: r for r in read_log(tmp_path / "straight")}
    resumed = read_log(tmp_path / "interrupted")
    assert [int(r["step"]) for r in resumed] == [2, 3, 4, 6, 8]
    for r in resumed[3:]:  # whole windows after the resume (step 4's holds one step) are the straight run's
        assert r["loss"] == rows[r["step"]]["loss"] and r["image_rankme"] == rows[r["step"]]["image_rankme"]
    assert rows["8"]["context_tokens"] == rows["8"]["target_tokens"] == ""  # no masks: the columns stay empty
    assert float(rows["8"]["target_std"]) > 0


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    """A short DINO run on one-channel images, and a labelled folder to evaluate it on."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("dino")
    cfg = dino_config(root / "run", data={"in_chans": 1, "mean": [0.5], "std": [0.25], "synthetic_size": 32})
    train(cfg, max_steps=2)
    return root / "run", labelled_folder(root / "data")


def test_a_dino_checkpoint_loads_evaluates_and_exports_as_ours_do(dino_run, tmp_path, capsys):
    import openjepa
    from openjepa.cli import main

    run, data = dino_run
    ckpt = run / "checkpoints/latest.pt"
    state = load_checkpoint(ckpt)
    assert state["format"] == "openjepa" and state["config"]["meta"]["objective"] == "dino"
    for which, key in (("target", "target_encoder"), ("context", "encoder")):
        encoder = openjepa.load_encoder(ckpt, which)
        assert all(torch.equal(v, state[key][k]) for k, v in encoder.state_dict().items())
    assert main(["eval", str(ckpt), "--data", str(data), "--protocol", "linear,knn", "--no-progress"]) == 0
    assert (run / "eval/latest_target.json").exists()
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(tmp_path / "out")]) == 0
    exported = openjepa.load_encoder(tmp_path / "out")
    assert all(torch.equal(v, state["target_encoder"][k]) for k, v in exported.state_dict().items())
    for load in (openjepa.load_ijepa, openjepa.load_predictor):
        with pytest.raises(CheckpointError, match="is a meta.objective: dino checkpoint: it has no predictor"):
            load(ckpt)
    assert main(["viz", "features", str(ckpt), "--out", str(tmp_path / "f.png"), "--n", "2"]) == 0


def test_the_report_of_a_dino_run_skips_what_needs_a_predictor(dino_run):
    from openjepa.viz import write_report

    run, _ = dino_run
    text = write_report(run, n_images=2).read_text()
    assert "meta.objective dino has no predictor: nothing imagines the hidden blocks" in text
    assert "meta.objective dino trains on views, not masks" in text
    assert text.count("Not available") == 2 and "alt='feature maps'" in text


def test_a_resumed_run_of_another_objective_is_refused(dino_run, tmp_path):
    run, _ = dino_run
    cfg = tiny_config(tmp_path / "ijepa", data={"in_chans": 1, "mean": [0.5], "std": [0.25], "synthetic_size": 32})
    cfg.logging.folder = str(run)
    with pytest.raises(CheckpointError, match="does not match this config"):
        train(cfg)
