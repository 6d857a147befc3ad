"""What the predictor imagines, measured (issue 39): fit the generative decoder on a trained run
(``openjepa.decoder``), then on held-out images with the run's target blocks hidden, compare
decoded samples under three conditions (target features everywhere; the predictor's outputs in
the hidden blocks; the learned unknown vector there, the control).

    python bench/imagine_fmnist.py RUN_DIR                      # fit within 15 minutes, then measure
    python bench/imagine_fmnist.py RUN_DIR --minutes 2 --eval-images 64 --threads 1   # a smoke test
    python bench/imagine_fmnist.py RUN_DIR --steps 3000         # a fixed number of decoder steps
    python bench/imagine_fmnist.py RUN_DIR --condition context --predictor-prob 0.5   # see below

``--condition full`` (the default, the issue's design) shows the decoder the whole image's target
features around the hidden blocks: they carry some of the blocks' content through the encoder's
attention, so the control can read what the predictor has to guess. ``--condition context`` shows
it only the context's features, computed from the context alone (what the predictor saw).
``--predictor-prob`` fills that share of the fit's hidden blocks with the predictor's outputs, so
the decoder learns to read them (they are a regression's mean, smoother than real features). On a
400-step 16 px smoke run: full / 0 put the imagined block nearer the truth than the control in 20%
of images, full / 0.5 in 34%, context / 0.5 in 67%.

The fit resumes from RUN/decoder when started again (its saved settings win over --steps and
--minutes then). Writes RUN/decoder/imagine_bench.json (or --out):

- ``reconstruction``: PSNR and SSIM (torchmetrics) of samples from the target features, on held-out images;
- ``nearer_share``: share of images whose imagined hidden blocks are nearer the truth (pixel MSE
  inside the blocks, mean over samples) than the control's;
- ``probe``: linear probes (on pixels, and on the frozen target encoder's pooled features) trained
  on real training images, scored on real, reconstructed, imagined and control images;
- ``spread``: the std across samples per pixel, inside the hidden blocks and outside them (and in
  the context alone, where the decoder is given the image's own features);
- ``targets``: each against the issue's target (PSNR >= 20 dB, nearer >= 70%, imagined classified
  >= 10 points more often than control, spread inside >= 2x outside).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

PROBE_LRS, PROBE_WDS, PROBE_STEPS = (1e-3, 1e-2, 1e-1), (0.0, 1e-2), 1000


def calibrate(settings, minutes: float, model, cfg) -> int:
    """Decoder steps that fit ``minutes`` on this machine: the features of the fitting images, then
    steps timed on a throwaway copy of the network (the fit itself is untouched), with the encoder
    and predictor work that ``settings.condition`` and ``predictor_prob`` add to a step."""
    from openjepa.data.transforms import prepare
    from openjepa.decoder import target_grid
    from openjepa.masks import mask_sampler_for
    from openjepa.models.decoder import Denoiser
    from openjepa.models.diffusion import diffusion_loss

    enc, size, batch = model.target_encoder, cfg.data.crop_size, settings.batch_size
    probe = torch.rand(batch, cfg.data.in_chans, size, size)
    t0 = time.perf_counter()
    features = target_grid(model, probe, cfg.data.mean, cfg.data.std, torch.device("cpu"))
    feature_s = (time.perf_counter() - t0) / len(probe) * settings.images
    net = Denoiser(enc.in_chans, enc.img_size, enc.grid, features.size(-1), settings.widths, settings.cond_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr)
    x, x0 = prepare(probe, enc, cfg.data.mean, cfg.data.std), probe * 2 - 1
    context_idx, target_idx = mask_sampler_for(cfg)(batch, torch.Generator().manual_seed(0))
    hidden = round(batch * settings.unknown_prob)
    predicted = round(hidden * settings.predictor_prob)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.no_grad():
            if settings.condition == "context" and hidden:
                model.target_features(x[:hidden], keep_idx=context_idx[:hidden])
            if predicted:
                c, t = context_idx[:predicted], target_idx[:predicted]
                model.predictor(model.encoder(x[:predicted], c), c, t)
        loss = diffusion_loss(net, x0, features.float(), torch.rand(len(x0)), torch.randn_like(x0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[1]  # the median of the timed steps (the first warms up)
    steps = max(1, int((60 * minutes * 0.9 - feature_s) / step_s))
    print(f"calibration: features ~{feature_s:.0f} s, {1000 * step_s:.0f} ms/step -> {steps} steps in {minutes} min")
    return steps


def probe_heads(train_x, train_y, seed: int = 0):
    """A linear probe (the evaluate.linear grid, smaller): (predict(x) -> labels, validation accuracy)."""
    from openjepa.evaluate.linear import accuracy, feature_stats, stratified_split, train_heads

    fit, val = stratified_split(train_y, 0.1, seed)
    mean, std = feature_stats(train_x[fit])
    w, b, grid = train_heads(
        (train_x[fit] - mean) / std, train_y[fit], 10, PROBE_LRS, PROBE_WDS, PROBE_STEPS, seed=seed
    )
    x_val = (train_x[val] - mean) / std
    best = max(range(len(grid)), key=lambda h: accuracy(x_val @ w[h] + b[h], train_y[val]))
    return (lambda x: ((x - mean) / std @ w[best] + b[best]).argmax(-1)), accuracy(
        x_val @ w[best] + b[best], train_y[val]
    )


def pooled(model, images, cfg) -> torch.Tensor:
    from openjepa.data.transforms import prepare

    with torch.no_grad():
        return torch.cat(
            [
                model.target_encoder(prepare(images[i : i + 256], model.target_encoder, cfg.data.mean, cfg.data.std))
                .mean(1)
                .float()
                for i in range(0, len(images), 256)
            ]
        )


def measure(imagined, labels, model, cfg, train_images, train_labels) -> dict:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    images, samples = imagined.images, imagined.samples
    B, K = samples["target"].shape[:2]
    truth = images[:, None].expand_as(samples["target"]).flatten(0, 1)
    recon = samples["target"].flatten(0, 1)
    hidden = imagined.pixel_mask()[:, None, None].expand_as(samples["target"])  # [B, K, C, H, W]
    out = {
        "reconstruction": {
            "psnr_db": float(peak_signal_noise_ratio(recon, truth, data_range=1.0, dim=(1, 2, 3))),
            "ssim": float(structural_similarity_index_measure(recon, truth, data_range=1.0)),
        },
        "hidden_mse": {},
    }
    per_image = {}
    for name, x in samples.items():
        err = ((x - images[:, None]) ** 2 * hidden).flatten(2).sum(-1) / hidden.flatten(2).sum(-1).clamp_min(1)
        per_image[name] = err.mean(1)  # [B]: mean over the samples
        out["hidden_mse"][name] = float(per_image[name].mean())
    out["nearer_share"] = float((per_image["predicted"] < per_image["control"]).float().mean())
    if K > 1:
        spread = {}
        inside = hidden[:, 0]
        context = imagined.pixel_mask(imagined.context)[:, None].expand_as(inside)
        for name, x in samples.items():
            std = x.std(dim=1)  # [B, C, H, W]
            spread[name] = {
                "inside": float(std[inside].mean()),
                "outside": float(std[~inside].mean()),
                "context": float(std[context].mean()),
            }
            spread[name]["ratio"] = spread[name]["inside"] / max(spread[name]["outside"], 1e-12)
            spread[name]["ratio_to_context"] = spread[name]["inside"] / max(spread[name]["context"], 1e-12)
        out["spread"] = spread
    if (labels >= 0).all() and (train_labels >= 0).all():
        y = labels.repeat_interleave(K)
        out["probe"] = {}
        for kind, embed in (("pixels", lambda x: x.flatten(1)), ("features", lambda x: pooled(model, x, cfg))):
            predict, val_acc = probe_heads(embed(train_images), train_labels)
            row = {"val_acc": val_acc, "real": float((predict(embed(images)) == labels).float().mean())}
            for name, x in samples.items():
                row[name] = float((predict(embed(x.flatten(0, 1))) == y).float().mean())
            out["probe"][kind] = row
    return out


def targets(result: dict) -> dict:
    t = {"psnr_db>=20": result["reconstruction"]["psnr_db"] >= 20, "nearer_share>=0.7": result["nearer_share"] >= 0.7}
    for kind, row in result.get("probe", {}).items():
        t[f"probe_{kind}: predicted-control>=0.10"] = row["predicted"] - row["control"] >= 0.10
    if "spread" in result:
        t["spread_ratio(predicted)>=2"] = result["spread"]["predicted"]["ratio"] >= 2
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default RUN/decoder/imagine_bench.json)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes", type=float, default=15.0, help="the fit's budget, steps calibrated on this machine"
    )
    budget.add_argument("--steps", type=int, default=None, help="the fit's steps (instead of --minutes)")
    parser.add_argument(
        "--condition",
        choices=("full", "context"),
        default="full",
        help="around hidden blocks: the whole image's features (full) or the context's alone (context)",
    )
    parser.add_argument(
        "--predictor-prob", type=float, default=0.0, help="share of hidden blocks filled by the predictor in the fit"
    )
    parser.add_argument("--images", type=int, default=10000, help="training images the decoder fits on")
    parser.add_argument("--eval-images", type=int, default=256, help="held-out images measured")
    parser.add_argument("--samples", type=int, default=4, help="samples per image and condition")
    parser.add_argument("--probe-images", type=int, default=10000, help="training images the probes learn from")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjepa.decoder import DecoderSettings, fit_decoder, imagine_images, load_decoder, read_images, split
    from openjepa.decoder.state import checkpointer, read_state, run_checkpoint
    from openjepa.interop import load_ijepa
    from openjepa.masks import mask_sampler_for

    model, cfg = load_ijepa(run_checkpoint(args.run_dir))
    state = read_state(checkpointer(args.run_dir))
    t0 = time.perf_counter()
    if state is not None:  # a fit under way or done: its own settings, so a resume stays exact
        settings = DecoderSettings.from_dict(state["settings"])
    else:
        settings = DecoderSettings(
            images=args.images,
            seed=args.seed,
            condition=args.condition,
            predictor_prob=args.predictor_prob,
            progress_bar=False,
        ).validate()
        settings.steps = args.steps or calibrate(settings, args.minutes, model, cfg)
    fit_decoder(args.run_dir, settings, model=(model, cfg))
    fit_s = time.perf_counter() - t0
    denoiser, settings, source = load_decoder(args.run_dir)

    t0 = time.perf_counter()
    (train, _), (held, order) = split(cfg, settings.images, settings.seed)
    images, labels = read_images(held, order, cfg.data.crop_size, n=args.eval_images)
    probe_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    train_images, train_labels = read_images(train, probe_order, cfg.data.crop_size, n=args.probe_images)
    images, train_images = images.float() / 255, train_images.float() / 255
    imagined = imagine_images(
        model, denoiser, images, cfg.data.mean, cfg.data.std, mask_sampler_for(cfg), args.samples, args.seed,
        settings.sample_steps, settings.eta, settings.condition,
    )  # fmt: skip
    result = measure(imagined, labels, model, cfg, train_images, train_labels)
    result["targets"] = targets(result)
    result.update(
        run=str(args.run_dir),
        decoder_steps=source["step"],
        fit_minutes=round(fit_s / 60, 2),
        measure_minutes=round((time.perf_counter() - t0) / 60, 2),
        eval_images=len(images),
        samples=args.samples,
        settings=settings.to_dict(),
        machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    )
    out = args.out or args.run_dir / "decoder" / "imagine_bench.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
