import json

import pytest

from conftest import tiny_config
from openjepa.bench import block_flops, flops_per_image
from openjepa.cli import main
from openjepa.config import load_config


def test_flops_formula_matches_the_papers_vit_b_example():
    cfg = load_config(None, ["meta.model_name=vit_base", "meta.pred_depth=6", "meta.pred_emb_dim=384"])
    total = flops_per_image(cfg, context_tokens=49, target_tokens=33, num_targets=4)
    target_forward = block_flops(196, 768, 12)
    assert total / 1e9 == pytest.approx(82, abs=1.5)  # REFERENCE.md §3: about 83 GFLOP per image
    assert target_forward / total == pytest.approx(0.42, abs=0.01)


def test_bench_prints_the_contract_json_last(tmp_path, capsys):
    config = tmp_path / "b.yaml"
    config.write_text(
        "data: {dataset: synthetic, batch_size: 4, crop_size: 16}\nmask: {patch_size: 4, min_keep: 2}\n"
        "meta: {model_name: vit_tiny, pred_depth: 1, pred_emb_dim: 48, device: cpu}\n"
    )
    assert main(["bench", str(config), "--steps", "1", "--windows", "1", "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("img_per_s", "step_ms", "peak_mem_mb", "gflop_per_img"):
        assert result[key] > 0
    assert set(result["phases_ms"]) == {"masks", "target", "context", "backward", "optimizer", "ema"}
    assert "mfu" not in result  # CPU: no peak to compare against


def test_loader_bench_reads_the_configs_own_images_through_the_training_loader(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (20 + i, 24), (10 * i, 0, 0)).save(folder / f"{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    config = tmp_path / "b.yaml"
    config.write_text(
        f"data: {{root_path: {folder}, batch_size: 4, crop_size: 16}}\nmask: {{patch_size: 4, min_keep: 2}}\n"
        "meta: {model_name: vit_tiny, pred_depth: 1, pred_emb_dim: 48, device: cpu}\n"
    )
    assert main(["bench", str(config), "--loader", "--steps", "2", "--warmup", "1", "--workers", "0,1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["dataset"] == "folder" and result["images"] == 13
    assert set(result["img_per_s"]) == {"0", "1"} and all(v > 0 for v in result["img_per_s"].values())
    assert result["masks_us_per_img"] > 0
    assert "1 worker(s)" in "\n".join(out)


def test_bench_times_the_training_loops_own_step(tmp_path, monkeypatch):
    """The timed step is pretraining's accumulate and optimizer_step, not a copy: each is called once
    per warm-up, timed and split step."""
    import importlib

    bench, step = (
        importlib.import_module(f"openjepa.{name}") for name in ("bench.step", "pretrain.step")
    )  # the modules
    assert bench.accumulate is step.accumulate and bench.optimizer_step is step.optimizer_step
    calls = {"accumulate": 0, "optimizer_step": 0}
    for name in calls:
        real = getattr(bench, name)
        monkeypatch.setattr(
            bench,
            name,
            lambda *a, _real=real, _name=name, **k: calls.__setitem__(_name, calls[_name] + 1) or _real(*a, **k),
        )
    cfg = tiny_config(tmp_path, data={"batch_size": 4}, meta={"device": "cpu"})
    result = bench.bench(cfg, steps=2, windows=2, warmup=1)
    assert calls == {"accumulate": 1 + 2 * 2 + 2, "optimizer_step": 1 + 2 * 2 + 2}
    assert all(v >= 0 for v in result["phases_ms"].values()) and result["phases_ms"]["target"] > 0
