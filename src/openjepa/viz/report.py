"""The run report: one self-contained HTML file (images embedded, no network) with the config,
the curves, the mask grid, feature maps, predictor retrievals and every evaluation found in
RUN/eval/. A section whose inputs are missing (no checkpoint yet, data not found) says why
instead of failing the report."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from pathlib import Path

import torch

from ..config import ConfigError
from ..data import DataError
from ..errors import BadInput
from ..interop import load_encoder, load_ijepa

log = logging.getLogger("openjepa")
SECTIONS = ("config", "curves", "masks", "features", "imagination", "evaluation")
TITLES = {
    "config": "Config",
    "curves": "Training curves",
    "masks": "Masks",
    "features": "Feature maps",
    "imagination": "What the predictor imagines",
    "evaluation": "Evaluation",
}
NOTES = {
    "masks": "Context patches keep the image; each target block has its own colour; dark patches are neither.",
    "features": "Rows: images; PCA of the target encoder's patch features (first three components as RGB, "
    "fitted over these images); cosine similarity of the marked centre patch to every patch.",
    "imagination": 'Retrieval, columns: image, masked context, "imagination", truth. The predictor\'s output for one target '
    "block is matched to the nearest real patch features in a bank built with the target encoder over "
    "other images of the dataset, and those patches' pixels are pasted into the hole. This is "
    "retrieval, not generation: the model produced no pixels.",
}
DENSE_NOTE = (
    "Dense probes on test images, one row each: the image; segmentation, truth then the linear probe's "
    "prediction on the encoder's patch features; depth, truth then prediction (near is bright)."
)
# Marks each image as loaded or broken once the page has loaded (read by the test in headless Chromium).
CHECK_SCRIPT = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});</script>"""


def png_data_uri(image_or_bytes) -> str:
    if isinstance(image_or_bytes, bytes):
        data = image_or_bytes
    else:
        buf = io.BytesIO()
        image_or_bytes.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def eval_tables(run_dir: Path) -> str:
    from ..evaluate import headline_cells

    parts = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            results = record["results"]
        except (ValueError, KeyError):
            continue
        cols, rows = headline_cells(results)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr><th>" + html.escape(enc) + "</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
            for enc, cells in rows.items()
        )
        meta = (
            f"{html.escape(path.name)}: {html.escape(record.get('dataset', ''))}, {record.get('which', '')} encoder, "
            f"{record.get('wall_s', '')} s on {html.escape(str(record.get('hardware', {}).get('device', '')))}"
        )
        parts.append(f"<p>{meta}</p><table><tr><th>encoder</th>{head}</tr>{body}</table>")
        figure = Path(record.get("dense_figure") or "")
        if figure.is_file():  # the dense probes' predictions beside the truth
            parts.append(
                f"<p class='note'>{DENSE_NOTE}</p><img alt='dense predictions' src='{png_data_uri(figure.read_bytes())}'>"
            )
    return (
        "".join(parts)
        or "<p class='note'>No evaluation yet: run <code>openjepa eval RUN/checkpoints/latest.pt"
        "</code> and rebuild the report.</p>"
    )


def summary(run_dir: Path) -> str:
    """The report's first lines: did it learn? The collapse probe's last reading against its step-0
    reading (the random encoder) and floors, and the newest evaluation against its baselines."""
    from ..pretrain.probes import CollapseProbe
    from .curves import read_columns

    lines = []
    cols = read_columns(run_dir / "log.csv")
    steps = cols.get("probe_step", cols.get("step", []))  # the step of the reading a row carries
    readings = [
        (int(step), rank, spread)
        for step, rank, spread in zip(steps, cols.get("image_rankme", []), cols.get("image_spread", []))
        if rank == rank and step == step
    ]  # NaN: the probe was off
    if readings:
        step, rank, spread = readings[-1]
        first = next(({"image_rankme": r, "image_spread": sp} for st, r, sp in readings if st == 0), None)
        why = CollapseProbe.reasons({"image_rankme": rank, "image_spread": spread}, first) if step > 0 else []
        low = bool(why)
        versus = (
            f" (step 0, the random encoder: {first['image_rankme']:.1f} and {first['image_spread']:.3f})"
            if first and step > 0
            else ""
        )
        text = (
            f"Collapse probe at step {step}: image_rankme {rank:.1f}, image_spread {spread:.3f}{versus}: how "
            f"many directions, and how much, the pooled features vary from image to image. The warning floors: "
            f"image_rankme {CollapseProbe.RANKME_FLOOR:.0f}, image_spread {CollapseProbe.SPREAD_RATIO:g} x "
            f"the step-0 reading."
        )
        if low:
            text = "WARNING: the features are collapsing: " + "; and ".join(why) + ". " + text
        lines.append(f"<p class='{'warn' if low else 'ok'}'>{html.escape(text)}</p>")
    evals = sorted((run_dir / "eval").glob("*.json"), key=lambda p: p.stat().st_mtime)
    for path in evals[-1:]:
        try:
            record = json.loads(path.read_text())
            results = record["results"]
        except (ValueError, KeyError):
            continue
        parts = []
        names = {"ijepa": "this encoder", "random": "the same ViT at random init", "pixels": "raw pixels"}
        for protocol, key, label in (("linear", "test_acc", "linear probe"), ("knn", "k=20", "kNN@20")):
            cells = [
                f"{shown} {100 * results[name][protocol][key]:.1f}%"
                for name, shown in names.items()
                if key in results.get(name, {}).get(protocol, {})
            ]
            if cells:
                parts.append(f"{label}: " + ", ".join(cells))
        if parts:
            labelled = f", probes trained on {record['train_size']} labelled images" if "train_size" in record else ""
            lines.append(f"<p>{html.escape('; '.join(parts))} ({html.escape(path.name)}{labelled}).</p>")
    return "<div id='summary'>" + "".join(lines) + "</div>" if lines else ""


DECODED_NOTE = (
    "Generative decoder (RUN/decoder, openjepa imagine), one row per held-out image: the image; the context the "
    "encoder saw; samples decoded from the target encoder's features everywhere; samples with the hidden blocks' "
    "features replaced by the predictor's outputs (what it imagines); samples with them replaced by the decoder's "
    "learned unknown vector (the control). Hidden blocks are outlined. Below it, the cheaper retrieval view."
)


def decoded_section(run_dir: Path, seed: int, loaded=None) -> str:
    """The generative decoder's figure when RUN/decoder holds a finished fit; '' otherwise.
    ``loaded``: the run's (model, config) when the report has read them already."""
    from ..decoder import load_decoder
    from .decoded import decoded_picture

    if not (run_dir / "decoder" / "checkpoints" / "latest.pt").exists():
        return ""
    _, settings, source = load_decoder(run_dir)
    if source["step"] < settings.steps:
        return f"<p class='note'>The decoder's fit is unfinished (step {source['step']} of {settings.steps}).</p>"
    uri = png_data_uri(decoded_picture(run_dir, 4, 3, seed, loaded))
    return f"<p class='note'>{html.escape(DECODED_NOTE)}</p><img src='{uri}' alt='decoded imagination'>"


def build_sections(run_dir: Path, n_images: int, bank_images: int, seed: int) -> dict[str, str]:
    from ..config import load_config
    from .curves import curves_png
    from .features import feature_figure, sample_images
    from .imagine import build_bank, imagination_figure, imagine
    from .masks import mask_grid, sampler_for

    def img(uri: str, alt: str) -> str:
        return f"<img src='{uri}' alt='{html.escape(alt)}'>"

    def missing(why: str) -> str:
        return f"<p class='note'>Not available: {html.escape(why)}</p>"

    sections = {}
    cfg_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise BadInput(f"run directory {run_dir} not found")
    if not cfg_path.exists():
        raise BadInput(f"{cfg_path} not found: is {run_dir} a run directory?")
    cfg = load_config(cfg_path)
    sections["config"] = f"<pre>{html.escape(cfg_path.read_text())}</pre>"
    try:
        sections["curves"] = img(png_data_uri(curves_png(run_dir)), "training curves")
    except BadInput as e:
        sections["curves"] = missing(str(e))
    try:
        raw = sample_images(cfg, n_images + bank_images, seed)
        shown, bank_src = raw[:n_images], raw[n_images:]
    except (DataError, ConfigError, OSError) as e:
        shown = None
        why = f"the data could not be read ({e})"
    masked = cfg.meta.objective == "ijepa"  # another objective (DINO) has no masks and no predictor
    if shown is not None and masked:
        sections["masks"] = img(png_data_uri(mask_grid(shown, cfg, seed=seed)), "mask grid")
    else:
        sections["masks"] = missing(
            why if masked else f"meta.objective {cfg.meta.objective} trains on views, not masks"
        )
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    if not checkpoint.exists():
        why = f"{checkpoint} does not exist yet"
        sections["features"] = sections["imagination"] = missing(why)
    elif shown is not None and not masked:
        encoder = load_encoder(checkpoint)  # the target (teacher) encoder, as for I-JEPA
        sections["features"] = img(
            png_data_uri(feature_figure(encoder, shown, cfg.data.mean, cfg.data.std)), "feature maps"
        )
        sections["imagination"] = missing(
            f"meta.objective {cfg.meta.objective} has no predictor: nothing imagines the hidden blocks"
        )
    elif shown is not None:
        model, ckpt_cfg = load_ijepa(checkpoint)
        mean, std = cfg.data.mean, cfg.data.std
        sections["features"] = img(png_data_uri(feature_figure(model.target_encoder, shown, mean, std)), "feature maps")
        if ckpt_cfg.meta.target == "pixels":
            sections["imagination"] = missing(
                "this run predicts pixels, not representations: there is nothing to retrieve"
            )
        elif not len(bank_src):
            sections["imagination"] = missing(
                f"the data has only {len(shown)} readable images, all shown: none is left for the retrieval bank"
            )
        else:
            bank = build_bank(model, bank_src, mean, std)
            rows = imagine(model, shown, mean, std, sampler_for(cfg, "multiblock"), *bank, seed=seed)
            sections["imagination"] = decoded_section(run_dir, seed, (model, ckpt_cfg)) + img(
                png_data_uri(imagination_figure(rows)), "predictor retrievals"
            )
    else:
        sections["features"] = sections["imagination"] = missing(why)
    sections["evaluation"] = eval_tables(run_dir)
    return sections


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}pre{background:#f6f6f6;padding:1em;overflow:auto;
max-height:30em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right}.note{color:#666;font-style:italic}.warn{background:#fde2e1;border-left:4px solid #c0392b;padding:.5em}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5em}"""


@torch.no_grad()
def write_report(
    run_dir: str | Path, out: str | Path | None = None, n_images: int = 8, bank_images: int = 2000, seed: int = 0
) -> Path:
    """Write RUN/report.html (or ``out``) and return its path."""
    run_dir = Path(run_dir)
    sections = build_sections(run_dir, n_images, bank_images, seed)
    body = "".join(
        f"<section id='{name}'><h2>{TITLES[name]}</h2>"
        + (f"<p class='note'>{html.escape(NOTES[name])}</p>" if name in NOTES else "")
        + sections[name]
        + "</section>"
        for name in SECTIONS
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>openjepa report: {html.escape(run_dir.name)}"
        f"</title><style>{STYLE}</style></head><body><h1>openjepa run report: {html.escape(str(run_dir))}</h1>"
        f"<p>Written {time.strftime('%Y-%m-%d %H:%M')}.</p>{summary(run_dir)}{body}{CHECK_SCRIPT}</body></html>"
    )
    out = Path(out) if out else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8", errors="backslashreplace")  # a path of any bytes
    tmp.replace(out)
    return out
