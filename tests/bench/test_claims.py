"""bench/claims.py's bookkeeping (issue 38): each arm's config is one the engine accepts, the budget
fits a whole schedule into the stated images, and the verdicts, seeds and curve read the results as
the tables say. Training and evaluation are the benchmark's, not the tests'."""

import importlib
import sys
from pathlib import Path

import pytest

from openjepa.engine.schedules import Schedules

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def claims():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("claims"), importlib.import_module("claims_table")
    finally:
        sys.path.remove(str(BENCH))


def row(domain, arm, metrics, seed=0, final=True, minutes=1.0, images=1000):
    return {
        "domain": domain,
        "arm": arm,
        "seed": seed,
        "final": final,
        "step": 1,
        "images": images,
        "minutes": minutes,
        "metrics": metrics,
    }


@pytest.mark.parametrize("domain", ["fmnist", "scenes"])
def test_every_arm_is_a_config_the_engine_accepts_and_differs_from_the_recipe_as_named(claims, domain, tmp_path):
    run, table = claims
    recipe, _, _ = run.arm_config(domain, "I-JEPA", 0, 2560, 3, tmp_path)
    for arm in table.ARMS:
        cfg, plan, folder = run.arm_config(domain, arm, 1, 2560, 3, tmp_path)
        assert cfg.meta.seed == 1 and folder.parent == tmp_path / f"{domain}_2560"
        assert cfg.meta.model_name == "vit_tiny" and cfg.data.batch_size == recipe.data.batch_size
        assert cfg.optimization.lr == recipe.optimization.lr  # one optimiser and LR for every arm
    dino, _, _ = run.arm_config(domain, "DINO", 0, 2560, 3, tmp_path)
    pixels, _, _ = run.arm_config(domain, "pixel targets", 0, 2560, 3, tmp_path)
    plain, _, _ = run.arm_config(domain, "I-JEPA plain", 0, 2560, 3, tmp_path)
    assert dino.meta.objective == "dino" and dino.meta.dino_head_bn and recipe.meta.objective == "ijepa"
    assert pixels.meta.target == "pixels" and recipe.meta.target == "representations"
    assert recipe.meta.variance_weight > 0 and plain.meta.variance_weight == 0 == plain.meta.covariance_weight


@pytest.mark.parametrize(("images", "size"), [(2560, 60000), (20000, 20000), (30000, 20000), (20000, 60000)])
def test_the_budget_is_one_whole_schedule_of_that_many_images(claims, images, size, tmp_path):
    run, _ = claims
    plan = run.schedule(images, 128, size, 0.1, 3)
    assert plan["steps"] == images // 128
    assert (
        plan["marks"][-1] == plan["steps"] and plan["marks"] == sorted(set(plan["marks"])) and len(plan["marks"]) == 3
    )
    cfg, _, _ = run.arm_config("fmnist", "I-JEPA", 0, images, 3, tmp_path)
    schedules = Schedules.from_config(cfg.optimization, 60000 // 128)
    assert schedules.total_steps == images // 128  # cosine and EMA ramp end exactly at the budget
    base = 0.2  # the demo config's warmup share of its one-epoch schedule
    assert schedules.warmup_steps == pytest.approx(base * images // 128, abs=1)


def test_a_budget_under_one_step_per_curve_point_is_refused(claims):
    run, _ = claims
    with pytest.raises(SystemExit, match="fewer than 3 steps"):
        run.schedule(300, 128, 60000, 0.2, 3)


def test_verdicts_follow_the_gap_the_seeds_and_the_direction_of_the_metric(claims):
    _, t = claims
    assert t.verdict([0.60], [0.55], "dist linear", "beats") == "reproduced (one seed)"
    assert t.verdict([0.55], [0.60], "dist linear", "beats") == "not reproduced (one seed)"
    assert t.verdict([0.60], [0.59], "dist linear", "beats") == "within noise (one seed)"
    assert t.verdict([0.59], [0.60], "fmnist linear", "matches") == "reproduced (one seed)"
    assert t.verdict([0.50], [0.60], "fmnist linear", "matches") == "not reproduced (one seed)"
    # three seeds each: the margin is two standard errors of the gap, not the one-seed 2 points
    tight = t.verdict([0.600, 0.601, 0.602], [0.590, 0.591, 0.592], "dist linear", "beats")
    loose = t.verdict([0.60, 0.70, 0.50], [0.55, 0.45, 0.65], "dist linear", "beats")
    assert tight == "reproduced" and loose == "within noise"
    # seeds on one side only: its spread stands for both, so 3 points over a one-seed arm is within noise here
    spread = [0.47, 0.50, 0.53]
    assert t.verdict(spread, [0.47], "fmnist 1% labels", "beats") == "within noise (one side one seed)"
    assert t.verdict(spread, [0.38], "fmnist 1% labels", "beats") == "reproduced (one side one seed)"
    # depth RMSE: lower is better, the gap in % of the other's RMSE
    assert t.gap([1.0], [2.0], "dense depth RMSE") == pytest.approx(50.0)
    assert t.verdict([1.0], [2.0], "dense depth RMSE", "beats") == "reproduced (one seed)"
    assert t.verdict([], [2.0], "dense depth RMSE", "beats") == "not run"


def test_only_the_claims_own_close_comparisons_get_more_seeds(claims):
    _, t = claims
    results = [
        row("fmnist", "I-JEPA", {"fmnist 1% labels": 0.700, "fmnist linear": 0.80}),
        row("fmnist", "pixel targets", {"fmnist 1% labels": 0.695, "fmnist linear": 0.70}),
        row("fmnist", "block", {"fmnist 1% labels": 0.60}),
        row("fmnist", "DINO", {"fmnist 1% labels": 0.60, "fmnist linear": 0.795}),
        row("scenes", "I-JEPA", {"count linear": 0.30, "dist linear": 0.5}),
        row("scenes", "DINO", {"count linear": 0.30, "dist linear": 0.4}),  # count is close, but not a seeded test
    ]
    pairs = t.close_pairs(results, ["fmnist", "scenes"])
    # DINO's 0.5 under I-JEPA on the linear probe is a match reproduced, not a comparison left open
    assert set(pairs) == {("fmnist", "I-JEPA"), ("fmnist", "pixel targets")}
    assert t.close_pairs(results, ["scenes"]) == []
    # seeds on one side widen the margin: a 3-point lead over a one-seed arm is then still open
    results += [row("fmnist", "I-JEPA", {"fmnist 1% labels": v}, seed=s) for s, v in ((1, 0.67), (2, 0.73))]
    results += [row("fmnist", "random", {"fmnist 1% labels": 0.67})]
    assert ("fmnist", "random") in t.close_pairs(results, ["fmnist"])


def test_the_curve_starts_at_random_init_and_is_read_at_equal_minutes(claims):
    _, t = claims
    results = [
        row("fmnist", "random init", {"fmnist 1% labels": 0.40}, minutes=0, images=0),
        row("fmnist", "I-JEPA", {"fmnist 1% labels": 0.50}, final=False, minutes=2.0, images=500),
        row("fmnist", "I-JEPA", {"fmnist 1% labels": 0.60}, minutes=4.0, images=1000),
        row("fmnist", "DINO", {"fmnist 1% labels": 0.70}, minutes=8.0, images=1000),
    ]
    c = t.curve(results, "fmnist", "I-JEPA")
    assert c == [(0.0, 0, 0.40), (2.0, 500, 0.50), (4.0, 1000, 0.60)]
    assert t.at_minutes(c, 3.0) == pytest.approx(0.55)
    assert t.at_minutes(c, 5.0) is None
    dino = t.curve(results, "fmnist", "DINO")
    assert t.at_minutes(dino, 4.0) == pytest.approx(0.55)  # halfway from 40 to 70
    lines = t.efficiency(results, ["fmnist"])
    assert "reproduced (one seed)" in lines[-1] and "not" not in lines[-1]  # 60.0 against DINO's 55.0
    assert any("| I-JEPA | 1,000 | 4.0 | 4 | 60.0 | 60.0 at 4.0 min |" in line for line in lines)


def test_the_section_is_rewritten_in_place_and_the_rest_of_the_file_kept(claims, tmp_path):
    _, t = claims
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nkept above\n")
    results = [
        row("fmnist", "I-JEPA", {"fmnist 1% labels": 0.70, "fmnist linear": 0.80}),
        row("fmnist", "pixel targets", {"fmnist 1% labels": 0.60, "fmnist linear": 0.81}),
    ]
    t.write_section(results, md, tmp_path / "c.png", "a CPU")
    first = md.read_text()
    assert first.count(t.START) == 1 and "kept above" in first
    assert (
        "| fmnist | fmnist 1% labels (beats) | I-JEPA 70.0 | pixel targets 60.0 | +10.0 | reproduced (one seed) |"
        in first
    )
    md.write_text(first + "\nkept below\n")
    results[1]["metrics"]["fmnist 1% labels"] = 0.75
    t.write_section(results, md, tmp_path / "c.png", "a CPU")
    second = md.read_text()
    assert second.count(t.START) == 1 and second.count(t.TITLE) == 1 and second.endswith("kept below\n")
    assert "+10.0" not in second and "| -5.0 | not reproduced (one seed) |" in second


def test_a_win_over_an_arm_under_random_init_says_so(claims):
    _, t = claims
    results = [
        row("scenes", "random init", {"dist linear": 0.50}, minutes=0, images=0),
        row("scenes", "I-JEPA", {"dist linear": 0.55}),
        row("scenes", "DINO", {"dist linear": 0.42}),
        row("scenes", "pixel targets", {"dist linear": 0.52}),
    ]
    rows = [("scenes", "dist linear", "I-JEPA", b, "beats") for b in ("DINO", "pixel targets", "block")]
    lines = t.claim_table(results, "3", "paper", rows)
    assert "| +13.0 | reproduced (one seed), but DINO is under random init |" in lines[4]
    assert lines[5].endswith("| +3.0 | reproduced (one seed) |")
    assert not any("block" in line for line in lines)  # an arm the domain did not run has no row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arms", "I-JEPA,MAE"], "unknown or no domain or arm: MAE"),
        (["--domains", "imagenet"], "unknown or no domain or arm: imagenet"),
        (["--arms", ","], r"unknown or no domain or arm: \(none given\)"),
        (["--points", "0"], "--points, --seeds, --images and --scenes-images must be at least 1"),
        (["--images", "-5"], "must be at least 1"),
        (["--md", "BENCHMARKS.txt"], "is not a markdown file"),
        (["--md", "."], "is not a markdown file"),
        (["--figure", "curve.jpg"], "is not a .png path"),
        (["--table-only"], "no results in .*results.json: run without --table-only first"),
        (["--images", "200", "--domains", "fmnist"], "--images 200 is fewer than 3 steps of 128 images"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_any_work(claims, argv, message, tmp_path, monkeypatch):
    run, _ = claims
    monkeypatch.chdir(tmp_path)
    md = tmp_path / "B.md"
    monkeypatch.setattr(sys, "argv", ["claims.py", "--runs-dir", str(tmp_path / "runs"), "--md", str(md), *argv])
    with pytest.raises(SystemExit, match=message):
        run.main()
    assert not (tmp_path / "runs").exists() and not md.exists()  # nothing trained, nothing written
