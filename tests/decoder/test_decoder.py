import csv
import hashlib
import shutil

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from openjepa.data.seeds import DEC_FIGURE, generator_for
from openjepa.data.transforms import prepare
from openjepa.decoder import (
    DecoderSettings,
    conditions,
    context_condition,
    draw_hidden,
    fill_predictions,
    fit_decoder,
    hidden_positions,
    imagine_images,
    load_decoder,
    read_images,
    split,
    to_unit,
)
from openjepa.errors import BadInput, ConfigError
from openjepa.interop import load_ijepa
from openjepa.masks import mask_sampler_for
from openjepa.models.decoder import Denoiser
from openjepa.models.diffusion import add_noise, alpha_bar, sample, velocity
from openjepa.pretrain import train
from openjepa.viz import write_report
from openjepa.viz.decoded import imagine


def tiny(**changes) -> DecoderSettings:
    """A decoder that fits in a fraction of a second on 16 px images."""
    values = dict(steps=6, batch_size=8, images=24, widths=(8, 8), cond_dim=8, warmup_steps=1, log_every=2)
    values.update(save_every=0, sample_steps=3, device="cpu", progress_bar=False)
    return DecoderSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretraining run of two steps (16 px synthetic images, a 4 x 4 patch grid)."""
    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("pretrained") / "run"
    train(tiny_config(run), max_steps=2)
    return run


@pytest.fixture
def run(pretrained, tmp_path):
    """A copy of the pretraining run of its own, for a test that fits a decoder in it."""
    return shutil.copytree(pretrained, tmp_path / "run")


def states(run_dir):
    state = torch.load(run_dir / "decoder/checkpoints/latest.pt", weights_only=True)
    return state["model"], state["ema"], state["opt"]["state"]


def losses_of(log_csv) -> dict:
    with open(log_csv, newline="") as f:
        return {row["step"]: row["loss"] for row in csv.DictReader(f)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        same(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a
    )


@pytest.mark.parametrize(
    "size, grid, widths", [(16, (4, 4), (8, 16)), (28, (7, 7), (8, 8, 16)), (18, (3, 3), (8, 8, 8))]
)
def test_the_denoiser_keeps_the_image_shape_and_pads_sizes_its_levels_do_not_divide(size, grid, widths):
    net = Denoiser(2, (size, size), grid, 12, widths, 4)
    x = torch.randn(3, 2, size, size)
    with torch.no_grad():
        net.out[-1].weight.normal_()  # the last conv starts at zero: give the output something to show
        out = net(x, torch.rand(3), torch.randn(3, grid[0] * grid[1], 12))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_the_unknown_vector_replaces_exactly_the_hidden_positions():
    net = Denoiser(1, (8, 8), (2, 2), 5, (4, 4), 4)
    with torch.no_grad():
        net.unknown.fill_(7.0)
    features = torch.randn(2, 4, 5)
    hidden = torch.tensor([[True, False, False, True], [False, False, False, False]])
    out = net.condition(features, hidden)
    assert (out[hidden] == 7.0).all() and torch.equal(out[~hidden], features[~hidden])
    assert net.condition(features, None) is features


def test_the_cosine_schedule_and_the_velocity_give_back_the_image():
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    a = alpha_bar(t)
    assert a[0] == 1.0 and a[-1] < 1e-4 and (a[1:] < a[:-1]).all()
    x0, noise = torch.rand(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    xt, v = add_noise(x0, t, noise), velocity(x0, t, noise)
    back = a.sqrt().view(-1, 1, 1, 1) * xt - (1 - a).sqrt().view(-1, 1, 1, 1) * v
    assert torch.allclose(back, x0, atol=1e-5)


def test_samples_of_one_condition_differ_and_one_seed_gives_the_same_samples():
    torch.manual_seed(0)
    net = Denoiser(1, (8, 8), (2, 2), 6, (4, 4), 4).eval()
    with torch.no_grad():
        net.out[-1].weight.normal_(std=0.1)
    features = torch.randn(1, 4, 6).repeat(3, 1, 1)  # one condition, three samples

    def draw(seed):
        return sample(net, features, (3, 1, 8, 8), steps=4, eta=1.0, generator=torch.Generator().manual_seed(seed))

    first = draw(0)
    assert torch.equal(first, draw(0)) and not torch.equal(first, draw(1))
    assert (first[0] - first[1]).abs().mean() > 1e-3 and (first[1] - first[2]).abs().mean() > 1e-3
    assert first.min() >= -1 and first.max() <= 1


def test_predictions_fill_the_target_blocks_and_overlaps_take_their_mean():
    features = torch.zeros(1, 4, 2)
    target_idx = torch.tensor([[[0, 1], [1, 2]]])  # patch 1 is in both blocks
    predictions = torch.tensor([[[[1.0, 1.0], [2.0, 2.0]], [[4.0, 4.0], [6.0, 6.0]]]])
    out = fill_predictions(features, target_idx, predictions)
    assert out[0, :, 0].tolist() == [1.0, 3.0, 6.0, 0.0]


def test_hidden_blocks_are_the_samplers_targets_drawn_again_for_a_generator(pretrained):
    _, cfg = load_ijepa(pretrained / "checkpoints/latest.pt")
    sampler = mask_sampler_for(cfg)

    def draw(prob, seed=0):
        return draw_hidden(sampler, 64, prob, predictor_prob, torch.Generator().manual_seed(seed))

    predictor_prob = 0.5
    context_idx, target_idx, chosen, predicted = draw(0.5)
    assert 10 < int(chosen.sum()) < 54 and not draw(0.0)[2].any() and draw(1.0)[2].all()
    assert predicted.any() and not (predicted & ~chosen).any() and (chosen & ~predicted).any()
    expected = sampler(64, torch.Generator().manual_seed(0))
    assert torch.equal(context_idx, expected[0]) and torch.equal(target_idx, expected[1])
    assert all(torch.equal(a, b) for a, b in zip(draw(0.5), draw(0.5)))
    hidden = hidden_positions(target_idx, 16)
    assert hidden.any(1).all() and not hidden.all()


def test_the_context_condition_never_sees_the_hidden_pixels(pretrained):
    model, cfg = load_ijepa(pretrained / "checkpoints/latest.pt")
    denoiser = Denoiser(cfg.data.in_chans, (16, 16), (4, 4), 192, (8, 8), 4)
    images = torch.rand(2, cfg.data.in_chans, 16, 16)
    context_idx = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7]])  # the top half, left or right
    changed = images.clone()
    changed[..., 8:, :] = 1 - changed[..., 8:, :]  # the bottom half, never in the context
    seen, full = [], []
    for x in (images, changed):
        x = prepare(x, model.target_encoder, cfg.data.mean, cfg.data.std)
        seen.append(context_condition(model, denoiser, x, context_idx))
        full.append(model.target_features(x))
    assert torch.equal(seen[0], seen[1])  # nothing of the hidden pixels reaches the decoder
    assert not torch.allclose(full[0][0, :2], full[1][0, :2])  # the whole image's features do carry them
    outside = torch.ones(2, 16, dtype=torch.bool).scatter_(1, context_idx, False)
    assert (seen[0][outside] == denoiser.unknown).all()


@pytest.mark.parametrize("condition, predictor_prob", [("full", 0.0), ("full", 0.5), ("context", 0.5)])
def test_a_stopped_fit_resumes_to_the_weights_of_an_uninterrupted_one(pretrained, tmp_path, condition, predictor_prob):
    whole, parts = (shutil.copytree(pretrained, tmp_path / name) for name in ("whole", "parts"))
    settings = tiny(condition=condition, predictor_prob=predictor_prob, unknown_prob=0.7)
    fit_decoder(whole, settings)
    fit_decoder(parts, settings, max_steps=3)
    assert torch.load(parts / "decoder/checkpoints/latest.pt", weights_only=True)["step"] == 3
    assert not same(states(whole)[0], states(parts)[0])
    fit_decoder(parts)  # no settings: the checkpoint's own
    for a, b in zip(states(whole), states(parts)):
        assert same(a, b)
    whole_log, parts_log = (losses_of(folder / "decoder/log.csv") for folder in (whole, parts))
    assert [whole_log[k] for k in ("2", "6")] == [parts_log[k] for k in ("2", "6")]  # rows not across the stop
    assert (parts / "decoder/train.log").exists() and (parts / "decoder/settings.yaml").exists()


def test_fitting_leaves_the_run_and_its_networks_unchanged(run):
    latest = run / "checkpoints/latest.pt"
    before = hashlib.sha256(latest.read_bytes()).hexdigest()
    model, cfg = load_ijepa(latest)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fit_decoder(run, tiny(), model=(model, cfg))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())
    assert hashlib.sha256(latest.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("condition", ["full", "context"])
def test_the_predicted_and_control_conditions_differ_only_inside_the_hidden_blocks(run, condition):
    fit_decoder(run, tiny(condition=condition))
    model, cfg = load_ijepa(run / "checkpoints/latest.pt")
    denoiser, settings, _ = load_decoder(run)
    (_, _), (held, order) = split(cfg, settings.images, settings.seed)
    images, _ = read_images(held, order, cfg.data.crop_size, n=3)
    context_idx, target_idx = mask_sampler_for(cfg)(3, torch.Generator().manual_seed(0))
    x = prepare(to_unit(images), model.target_encoder, cfg.data.mean, cfg.data.std)
    grids = conditions(
        model, denoiser, to_unit(images), cfg.data.mean, cfg.data.std, context_idx, target_idx, condition
    )
    hidden = hidden_positions(target_idx, 16)
    assert torch.equal(grids["predicted"][~hidden], grids["control"][~hidden])
    assert (grids["control"][hidden] == denoiser.unknown).all()  # the control path: no predictor in it
    with torch.no_grad():  # the predictor's outputs go in as they are: it predicts the layer-normed targets
        predicted = model.predictor(model.encoder(x, context_idx), context_idx, target_idx)
    assert torch.allclose(grids["predicted"], fill_predictions(grids["control"], target_idx, predicted), atol=1e-6)
    assert torch.equal(grids["target"], model.target_features(x))
    if condition == "full":
        assert torch.equal(grids["control"][~hidden], grids["target"][~hidden])
    else:
        context = hidden_positions(context_idx[:, None], 16)
        assert (grids["control"][~context] == denoiser.unknown).all()
        assert torch.equal(grids["control"][context], model.target_features(x, keep_idx=context_idx).flatten(0, 1))


def test_imagined_samples_are_held_out_drawn_again_for_a_seed_and_differ_between_samples(run):
    fit_decoder(run, tiny())
    model, cfg = load_ijepa(run / "checkpoints/latest.pt")
    denoiser, settings, _ = load_decoder(run)
    (_, fit_idx), (_, held_idx) = split(cfg, settings.images, settings.seed)
    assert not set(fit_idx.tolist()) & set(held_idx.tolist())  # no test split (synthetic data): set aside
    images = to_unit(read_images(*split(cfg, settings.images, settings.seed)[1], cfg.data.crop_size, n=2)[0])

    def draw(seed):
        return imagine_images(model, denoiser, images, cfg.data.mean, cfg.data.std, mask_sampler_for(cfg), 3, seed, 3)

    first = draw(0)
    assert first.samples["target"].shape == (2, 3, 3, 16, 16) and first.pixel_mask().shape == (2, 16, 16)
    g = generator_for(0, DEC_FIGURE, 0)  # each image's mask drawn alone: no context cut to the shortest
    masks = [mask_sampler_for(cfg)(1, g) for _ in range(2)]
    assert torch.equal(first.context, torch.cat([hidden_positions(c[:, None], 16) for c, _ in masks]))
    assert torch.equal(first.hidden, torch.cat([hidden_positions(t, 16) for _, t in masks]))
    assert not (first.context & first.hidden).any()
    for name, x in first.samples.items():
        assert torch.equal(x, draw(0).samples[name])
        assert (x[:, 0] - x[:, 1]).abs().mean() > 1e-4  # K samples of one condition differ
    assert not torch.equal(first.samples["predicted"], draw(1).samples["predicted"])


def test_imagine_writes_the_figure_and_reuses_the_fitted_decoder(run, tmp_path):
    out = imagine(run, tmp_path / "fig.png", n_images=2, samples=2, settings=tiny())
    with Image.open(out) as im:
        width, height = im.size
    assert width == 8 * 16 * 4 + 8 * 2 + 4 * 12 and height == 28 + 2 * (16 * 4 + 2)  # 2 + 3 x 2 tiles; a header
    checkpoint = run / "decoder/checkpoints/latest.pt"
    stamp = checkpoint.stat().st_mtime_ns
    imagine(run, tmp_path / "again.png", n_images=1, samples=1)
    assert checkpoint.stat().st_mtime_ns == stamp  # fitted once, reused
    page = write_report(run, n_images=2, bank_images=8).read_text()  # the report shows the decoder's figure
    assert "alt='decoded imagination'" in page and "alt='predictor retrievals'" in page


def test_the_report_draws_no_decoder_figure_from_an_unfinished_fit(run):
    fit_decoder(run, tiny(steps=8), max_steps=3)
    page = write_report(run, n_images=2, bank_images=8).read_text()
    assert "unfinished (step 3 of 8)" in page and "decoded imagination" not in page


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"out_png": "fig.jpg"}, "fig.jpg"),
        ({"n_images": 0}, "images must be a whole number of at least 1, got 0"),
        ({"samples": 0}, "samples must be a whole number of at least 1, got 0"),
        ({"samples": 1.5}, "got 1.5"),
    ],
)
def test_bad_figure_arguments_are_one_line_errors_naming_the_value_and_write_nothing(run, tmp_path, kwargs, named):
    args = {"run_dir": run, "out_png": tmp_path / "fig.png", **kwargs}
    if not str(args["out_png"]).startswith(str(tmp_path)):
        args["out_png"] = tmp_path / args["out_png"]
    with pytest.raises(BadInput) as e:
        imagine(**args)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert not (run / "decoder").exists() and not list(tmp_path.glob("*.png"))


def test_a_folder_that_is_not_a_run_is_refused_by_name(tmp_path):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for call in (lambda: imagine(folder, tmp_path / "fig.png"), lambda: fit_decoder(folder, tiny())):
        with pytest.raises(BadInput) as e:
            call()
        assert str(folder) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    with pytest.raises(BadInput, match="no decoder"):
        load_decoder(folder)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"steps": 0}, "steps"),
        ({"unknown_prob": 1.5}, "unknown_prob"),
        ({"widths": ()}, "widths"),
        ({"condition": "all"}, "condition"),
    ],
)
def test_bad_decoder_settings_are_refused_before_anything_is_written(run, change, named):
    with pytest.raises(ConfigError, match=named):
        fit_decoder(run, tiny(**change))
    with pytest.raises(ConfigError, match="max_steps"):
        fit_decoder(run, tiny(), max_steps=0)
    assert not (run / "decoder").exists()


def test_target_features_of_every_patch_kept_are_the_whole_images(pretrained):
    model, cfg = load_ijepa(pretrained / "checkpoints/latest.pt")
    x = prepare(torch.rand(2, cfg.data.in_chans, 16, 16), model.target_encoder, cfg.data.mean, cfg.data.std)
    every = torch.arange(16).expand(2, -1)
    assert torch.allclose(model.target_features(x, keep_idx=every), model.target_features(x), atol=1e-5)
    assert model.target_features(x, keep_idx=every[:, :5]).shape == (2, 5, 192)
