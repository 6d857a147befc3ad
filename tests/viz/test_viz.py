import re
import shutil
import subprocess

import numpy as np
import torch

from conftest import labelled_folder, tiny_config
from openjepa.cli import main
from openjepa.data.transforms import prepare
from openjepa.evaluate import evaluate
from openjepa.ijepa import image_patches
from openjepa.interop import load_ijepa
from openjepa.masks import build_mask_sampler
from openjepa.pretrain import train
from openjepa.viz import STRATEGIES, mask_grid, mask_overlay, pca_rgb, pick_images, retrieve, write_report
from openjepa.viz.imagine import build_bank, imagine, unpatch
from openjepa.viz.masks import ALPHA, DARK, TARGET_COLOURS
from openjepa.viz.report import SECTIONS


def test_mask_picture_colours_agree_with_the_sampled_indices():
    grid, p = (8, 8), 3
    context_idx, target_idx = build_mask_sampler("multiblock", grid, min_keep=2)(4, torch.Generator().manual_seed(0))
    image = torch.full((1, grid[0] * p, grid[1] * p), 0.5)
    for b in range(4):
        out = mask_overlay(image[:, :, :], context_idx[b], target_idx[b], p)
        for patch in range(64):
            r, c = divmod(patch, 8)
            pixels = out[r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(-1, 3)
            blocks = [m for m in range(target_idx.size(1)) if patch in target_idx[b, m].tolist()]
            if blocks:  # the last block drawn wins where blocks overlap
                want = np.rint((1 - ALPHA) * 127.5 + ALPHA * TARGET_COLOURS[blocks[-1]])
            elif patch in context_idx[b].tolist():
                want = np.full(3, np.rint(127.5))
            else:
                want = np.full(3, np.rint(127.5 * DARK))
            assert (pixels == want).all(), (b, patch)


def test_mask_grid_has_one_row_per_strategy(tmp_path):
    cfg = tiny_config(tmp_path)
    images = torch.rand(3, 3, 16, 16)
    grid = mask_grid(images, cfg, scale=2, label_width=50)
    assert grid.size == (50 + 3 * (32 + 4), len(STRATEGIES) * (32 + 4))


def test_pca_map_shape_range_determinism_and_first_component():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    strength = torch.linspace(-3, 3, 2 * 9)
    feats = strength[:, None] * direction + 0.01 * torch.randn(18, 16, generator=g)
    maps = pca_rgb(feats.reshape(2, 9, 16), (3, 3))
    assert maps.shape == (2, 3, 3, 3) and maps.min() >= 0 and maps.max() <= 1
    assert np.array_equal(maps, pca_rgb(feats.reshape(2, 9, 16), (3, 3)))
    red = maps[..., 0].reshape(-1)  # the planted direction is the first component, up to sign
    assert abs(np.corrcoef(red, strength.numpy())[0, 1]) > 0.999
    dataset = [(torch.full((1, 4, 4), float(i)), i) for i in range(20)]
    assert torch.equal(pick_images(dataset, 5, seed=3), pick_images(dataset, 5, seed=3))
    assert not torch.equal(pick_images(dataset, 5, seed=3), pick_images(dataset, 5, seed=4))


def test_retrieval_returns_the_exact_bank_entry():
    bank = torch.randn(500, 24, generator=torch.Generator().manual_seed(0))
    picks = torch.tensor([0, 7, 499, 123, 7])
    assert torch.equal(retrieve(bank, bank[picks], chunk=2), picks)


def test_imagination_keeps_context_and_truth_pixels(tmp_path):
    train(tiny_config(tmp_path), max_steps=1)
    model, cfg = load_ijepa(tmp_path / "checkpoints/latest.pt")
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpatch(image_patches(images, 4)[0], (4, 4)), images[0])
    bank = build_bank(model, images, cfg.data.mean, cfg.data.std)
    assert bank[0].shape == (48, 192) and bank[1].shape == (48, 3, 4, 4)

    # the bank is the model's own training targets, whichever they are (here data2vec's too)
    def targets():
        return model.target_features(prepare(images, model.encoder, cfg.data.mean, cfg.data.std))

    torch.testing.assert_close(bank[0], targets().flatten(0, 1))
    model.target_layers = 2
    two = build_bank(model, images, cfg.data.mean, cfg.data.std)[0]
    torch.testing.assert_close(two, targets().flatten(0, 1))
    assert not torch.allclose(two, bank[0], atol=1e-2)
    model.target_layers = 1
    sampler = build_mask_sampler("multiblock", (4, 4), min_keep=2)
    rows = imagine(model, images, cfg.data.mean, cfg.data.std, sampler, *bank, seed=0)
    g = torch.Generator().manual_seed(0)  # each image's mask drawn alone
    masks = [sampler(1, g) for _ in range(3)]
    for (image, context, imagined, truth), (ctx, tgt) in zip(rows, ((c[0], t[0, 0]) for c, t in masks)):
        own, ctx_p, imag_p, truth_p = (image_patches(x[None], 4)[0] for x in (image, context, imagined, truth))
        assert torch.equal(ctx_p[ctx], own[ctx]) and torch.equal(imag_p[ctx], own[ctx])
        assert torch.equal(truth_p[tgt], own[tgt])
        # every pasted patch is a real bank patch
        for patch in imag_p[tgt]:
            assert any(torch.equal(patch, b) for b in bank[1])


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed for this test: apt-get install chromium (make test installs it)"
    return path


def test_report_opens_in_headless_chromium_with_every_section_and_image(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, logging={"monitor_every": 1, "monitor_images": 32})
    train(cfg, max_steps=8)
    data = labelled_folder(tmp_path / "data", channels=3)
    evaluate(
        run / "checkpoints/latest.pt",
        str(data),
        ("linear", "knn"),
        ("pixels",),
        linear_steps=20,
        progress=False,
        precision="fp32",
    )
    assert main(["report", str(run), "--n", "4"]) == 0
    page = run / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    dom = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert total == 4 and loaded == total  # curves, masks, features, imagination; none broken
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom
    assert "Not available" not in dom
    assert "| pixels |" not in dom and "<th>pixels</th>" in dom  # the evaluation table, as HTML
    summary = dom[dom.index('<div id="summary">') : dom.index('<section id="config">')]  # the first lines
    assert "Collapse probe at step 8" in summary
    assert re.search(r"linear probe: this encoder [\d.]+%, raw pixels [\d.]+%", summary)


def test_report_of_a_run_without_checkpoint_or_data_says_why(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    (tmp_path / "run").mkdir()
    cfg.data.dataset, cfg.data.root_path = "folder", str(tmp_path / "gone")
    cfg.save(tmp_path / "run/config.yaml")
    (tmp_path / "run/log.csv").write_text(
        "step,loss,image_rankme,image_spread,probe_step\n1,0.5,9.1,0.06,0\n2,0.4,8.5,0.02,2\n"
    )
    text = write_report(tmp_path / "run").read_text()
    assert text.count("Not available") == 3 and "gone" in text
    assert (
        "WARNING: the features are collapsing: image_spread 0.020 is under 0.5 x the random encoder&#x27;s 0.060"
        in text
    )
    assert "at step 2: image_rankme 8.5" in text and "under the floor" not in text  # rankme 8.5 is above its floor
    assert "(step 0, the random encoder: 9.1 and 0.060)" in text
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_viz_commands_write_pngs(tmp_path):
    from PIL import Image

    cfg = tiny_config(tmp_path / "run")
    train(cfg, max_steps=2)
    cfg.save(tmp_path / "tiny.yaml")
    assert main(["viz", "masks", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "m.png"), "--n", "3"]) == 0
    assert Image.open(tmp_path / "m.png").size == (90 + 3 * (64 + 4), len(STRATEGIES) * (64 + 4))
    assert main(["viz", "curves", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size[0] > 0
    assert (
        main(
            [
                "viz",
                "features",
                str(tmp_path / "run/checkpoints/latest.pt"),
                "--out",
                str(tmp_path / "f.png"),
                "--n",
                "2",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "f.png").size == (2 * (64 + 4), 3 * (64 + 4))
    assert main(["viz", "features", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "g.png")]) == 2
    assert not (tmp_path / "g.png").exists()
