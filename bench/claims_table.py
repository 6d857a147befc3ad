"""The tables, verdicts and curve of bench/claims.py, from its results (a list of rows
{domain, arm, seed, final, step, images, minutes, metrics}); no training here.

    python bench/claims_table.py runs/claims/results.json      # print the section
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

ARMS = ("I-JEPA", "I-JEPA plain", "pixel targets", "block", "rasterized", "random", "DINO")
BASELINES = ("random init", "raw pixels")
DOMAIN_TASKS = {  # domain -> [(eval data, protocols)] at the end of a run
    "fmnist": [("fashion_mnist", ("linear", "lowshot"))],
    "scenes": [
        ("scenes:count", ("linear", "attentive")),
        ("scenes:dist", ("linear", "attentive")),
        ("scenes", ("seg", "depth")),
    ],
}
CURVE_TASKS = {  # the cheap evaluations at the curve's earlier points
    "fmnist": [("fashion_mnist", ("linear", "lowshot"))],
    "scenes": [("scenes:dist", ("linear",))],
}
CURVE_METRIC = {"fmnist": "fmnist 1% labels", "scenes": "dist linear"}
COLUMNS = {
    "fmnist": ["fmnist linear", "fmnist 1% labels"],
    "scenes": [
        "count linear",
        "count attentive",
        "dist linear",
        "dist attentive",
        "dense seg mIoU",
        "dense depth RMSE",
    ],
}
LOWER_IS_BETTER = {"dense depth RMSE"}
NOISE_POINTS = 2.0  # a one-seed gap under this is within noise; comparisons under it get more seeds
SEEDED = {
    ("fmnist", "fmnist 1% labels"),
    ("fmnist", "fmnist linear"),
    ("scenes", "dist linear"),
}  # the claims' own tests
START, END = "<!-- claims:start -->", "<!-- claims:end -->"
TITLE = "## The paper's claims at a laptop budget (issue 38)"


def marks(tag: str = "") -> tuple[str, str, str]:
    """(start mark, end mark, heading) of the section: the CPU's, or another machine's (``tag``, e.g. gpu)."""
    if not tag:
        return START, END, TITLE
    return (
        f"<!-- claims:{tag}:start -->",
        f"<!-- claims:{tag}:end -->",
        f"### The same claims on a larger budget ({tag})",
    )


# (title, the paper's figures, [(domain, metric, arm a, arm b, kind)]); the first row is the claim's own test
CLAIMS = [
    (
        "1. Predicting representations beats predicting pixels",
        "paper: 66.9 vs 40.7 on 1% of ImageNet (ViT-L/16, same model and masks)",
        [
            ("fmnist", "fmnist 1% labels", "I-JEPA", "pixel targets", "beats"),
            ("fmnist", "fmnist linear", "I-JEPA", "pixel targets", "beats"),
            ("scenes", "dist linear", "I-JEPA", "pixel targets", "beats"),
            ("scenes", "count linear", "I-JEPA", "pixel targets", "beats"),
            ("scenes", "dense seg mIoU", "I-JEPA", "pixel targets", "beats"),
            ("scenes", "dense depth RMSE", "I-JEPA", "pixel targets", "beats"),
        ],
    ),
    (
        "2. Multi-block masking beats block, rasterized and random masking",
        "paper, 1% of ImageNet (ViT-B/16): multi-block 54.2, block 20.2, rasterized 15.5, random 17.6",
        [
            ("fmnist", "fmnist 1% labels", "I-JEPA", "block", "beats"),
            ("fmnist", "fmnist 1% labels", "I-JEPA", "rasterized", "beats"),
            ("fmnist", "fmnist 1% labels", "I-JEPA", "random", "beats"),
            ("scenes", "dist linear", "I-JEPA", "block", "beats"),
            ("scenes", "dist linear", "I-JEPA", "rasterized", "beats"),
            ("scenes", "dist linear", "I-JEPA", "random", "beats"),
        ],
    ),
    (
        "3. Without hand-made augmentations it matches view invariance on classification and beats it on spatial tasks",
        "paper: Clevr/Dist 72.4 (I-JEPA ViT-H/14) vs 62.8 (iBOT ViT-L/16) and 53.4 (DINO ViT-B/8)",
        [
            ("scenes", "dist linear", "I-JEPA", "DINO", "beats"),
            ("scenes", "dist attentive", "I-JEPA", "DINO", "beats"),
            ("scenes", "count linear", "I-JEPA", "DINO", "beats"),
            ("scenes", "count attentive", "I-JEPA", "DINO", "beats"),
            ("fmnist", "fmnist linear", "I-JEPA", "DINO", "matches"),
            ("fmnist", "fmnist 1% labels", "I-JEPA", "DINO", "matches"),
        ],
    ),
]


def values(results: list[dict], domain: str, arm: str, metric: str) -> list[float]:
    """The metric of every seed's finished run of ``arm`` (baselines: their one evaluation)."""
    return [
        r["metrics"][metric]
        for r in results
        if r["domain"] == domain and r["arm"] == arm and r["final"] and r["metrics"].get(metric) is not None
    ]


def points(value: float, metric: str) -> float:
    return value if metric in LOWER_IS_BETTER else 100 * value


def gap(a: list[float], b: list[float], metric: str) -> float:
    """a's lead over b in points (accuracy) or in % of b's RMSE (depth): positive when a is better."""
    if metric in LOWER_IS_BETTER:
        return 100 * (statistics.mean(b) - statistics.mean(a)) / statistics.mean(b)
    return 100 * (statistics.mean(a) - statistics.mean(b))


def noise(a: list[float], b: list[float], metric: str) -> float | None:
    """Two standard errors of the gap (its units): from both sides' spreads when both have seeds,
    from the seeded side's spread (taken for both) when one has; None when neither has."""
    if len(a) < 2 and len(b) < 2:
        return None
    scale = 100 / statistics.mean(b) if metric in LOWER_IS_BETTER else 100
    if len(a) >= 2 and len(b) >= 2:
        return 2 * scale * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    spread = statistics.variance(a if len(a) >= 2 else b)
    return max(NOISE_POINTS, 2 * scale * math.sqrt(spread * (1 / len(a) + 1 / len(b))))


def verdict(a: list[float], b: list[float], metric: str, kind: str) -> str:
    if not a or not b:
        return "not run"
    g, n = gap(a, b, metric), noise(a, b, metric)
    margin = NOISE_POINTS if n is None else n
    seeds = " (one seed)" if n is None else ("" if min(len(a), len(b)) >= 2 else " (one side one seed)")
    if kind == "matches":
        return ("reproduced" if g >= -margin else "not reproduced") + seeds
    if abs(g) <= margin:
        return "within noise" + seeds
    return ("reproduced" if g > 0 else "not reproduced") + seeds


def close_pairs(results: list[dict], domains: list[str]) -> list[tuple[str, str]]:
    """(domain, arm) of both sides of every claim row on a SEEDED metric that its verdict leaves
    within noise (a one-seed gap under NOISE_POINTS, or under the seeded side's two standard
    errors): these get more seeds. Baselines have one evaluation and are never re-run."""
    out: list[tuple[str, str]] = []
    for _, _, rows in CLAIMS:
        for domain, metric, a, b, kind in rows:
            if domain not in domains or (domain, metric) not in SEEDED:
                continue
            va, vb = values(results, domain, a, metric), values(results, domain, b, metric)
            if va and vb and verdict(va, vb, metric, kind).startswith("within noise"):
                out += [(domain, arm) for arm in (a, b) if arm in ARMS and (domain, arm) not in out]
    return out


def cell(vals: list[float], metric: str) -> str:
    if not vals:
        return "–"
    fmt = "{:.3f}" if metric in LOWER_IS_BETTER else "{:.1f}"
    text = fmt.format(points(statistics.mean(vals), metric))
    if len(vals) > 1:
        text += " ± " + fmt.format(points(statistics.stdev(vals), metric)) + f" ({len(vals)})"
    return text


def final_minutes(results: list[dict], domain: str, arm: str) -> float | None:
    m = [r["minutes"] for r in results if r["domain"] == domain and r["arm"] == arm and r["final"] and r["seed"] == 0]
    return m[0] if m else None


def overview(results: list[dict], domains: list[str]) -> list[str]:
    cols = [(d, m) for d in domains for m in COLUMNS[d]]
    lines = [
        "| arm | " + " | ".join(f"{m}" for _, m in cols) + " | " + " | ".join(f"{d} min" for d in domains) + " |",
        "|---" * (len(cols) + len(domains) + 1) + "|",
    ]
    for arm in ARMS + BASELINES:
        if not any(r["arm"] == arm for r in results):
            continue
        mins = [final_minutes(results, d, arm) for d in domains]
        lines.append(
            f"| {arm} | "
            + " | ".join(cell(values(results, d, arm, m), m) for d, m in cols)
            + " | "
            + " | ".join("–" if x is None else f"{x:.1f}" for x in mins)
            + " |"
        )
    return lines


def claim_table(results: list[dict], title: str, paper: str, rows: list) -> list[str]:
    lines = [f"**{title}** ({paper})", "", "| data | metric | a | b | a − b | verdict |", "|---|---|---|---|---|---|"]
    verdicts = []
    for domain, metric, a, b, kind in rows:
        if not any(r["domain"] == domain and r["arm"] == b for r in results):
            continue  # an arm this domain did not run (a variant, or the masks on scenes)
        va, vb = values(results, domain, a, metric), values(results, domain, b, metric)
        v = verdict(va, vb, metric, kind)
        start = values(results, domain, "random init", metric)
        if v.startswith("reproduced") and vb and start and gap(vb, start, metric) < 0:
            v += f", but {b} is under random init"  # a win over an arm that did not learn says little
        verdicts.append(v)
        g = f"{gap(va, vb, metric):+.1f}" + (" %" if metric in LOWER_IS_BETTER else "") if va and vb else "–"
        lines.append(f"| {domain} | {metric} ({kind}) | {a} {cell(va, metric)} | {b} {cell(vb, metric)} | {g} | {v} |")
    first = verdicts[0] if verdicts else "not run"
    lines += ["", f"Verdict at this budget: **{first}** on the claim's own test (the first row)."]
    return lines


def curve(results: list[dict], domain: str, arm: str) -> list[tuple[float, int, float]]:
    """(minutes, images, value) along seed 0's run, from (0, 0, random init's value) where known."""
    metric = CURVE_METRIC[domain]
    start = values(results, domain, "random init", metric)
    pts = [(0.0, 0, start[0])] if start else []
    pts += sorted(
        (r["minutes"], r["images"], r["metrics"][metric])
        for r in results
        if r["domain"] == domain and r["arm"] == arm and r["seed"] == 0 and metric in r["metrics"]
    )
    return pts


def at_minutes(pts: list[tuple[float, int, float]], t: float) -> float | None:
    """The curve's value at ``t`` minutes, linear between its points; None beyond its ends."""
    for (t0, _, v0), (t1, _, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return pts[-1][2] if pts and math.isclose(pts[-1][0], t) else None


def efficiency(results: list[dict], domains: list[str]) -> list[str]:
    arms = ("I-JEPA", "pixel targets", "DINO")
    lines = [
        "**4. It gets there with less compute** (paper: one view per image; about 5× fewer iterations than pixel targets)",
        "",
        "| data | metric | arm | images | minutes | images/s | at the budget | at equal minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for domain in domains:
        curves = {a: curve(results, domain, a) for a in arms}
        ends = [c[-1][0] for c in curves.values() if c and c[-1][0] > 0]
        if not ends:
            continue
        t = min(ends)
        metric = CURVE_METRIC[domain]
        at_t = {}
        for arm, c in curves.items():
            if not c or c[-1][0] == 0:
                continue
            minutes, images, value = c[-1]
            at_t[arm] = at_minutes(c, t)
            lines.append(
                f"| {domain} | {metric} | {arm} | {images:,} | {minutes:.1f} | {images / (60 * minutes):.0f} | "
                f"{points(value, metric):.1f} | {points(at_t[arm], metric):.1f} at {t:.1f} min |"
            )
        others = [v for a, v in at_t.items() if a != "I-JEPA"]
        if "I-JEPA" in at_t and others:
            lead = 100 * (at_t["I-JEPA"] - max(others))
            v = "within noise" if abs(lead) <= NOISE_POINTS else ("reproduced" if lead > 0 else "not reproduced")
            verdicts.append(f"{domain}: {v} (one seed)")
    lines += [
        "",
        f"Verdict at this budget: **{'; '.join(verdicts) or 'not run'}** (I-JEPA against the better of the "
        "others at equal minutes: the shortest run's, the others read off their curves).",
    ]
    return lines


def figure(results: list[dict], domains: list[str], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = [d for d in domains if any(curve(results, d, a)[1:] for a in ("I-JEPA", "pixel targets", "DINO"))]
    if not domains:
        return None
    fig, axes = plt.subplots(len(domains), 2, figsize=(10, 3.6 * len(domains)), squeeze=False)
    for row, domain in zip(axes, domains):
        metric = CURVE_METRIC[domain]
        for arm, style in (("I-JEPA", "o-"), ("pixel targets", "s-"), ("DINO", "^-")):
            c = curve(results, domain, arm)
            if len(c) > 1:
                row[0].plot([p[0] for p in c], [points(p[2], metric) for p in c], style, label=arm)
                row[1].plot([p[1] for p in c], [points(p[2], metric) for p in c], style, label=arm)
        for base, ls in (("random init", ":"), ("raw pixels", "--")):
            v = values(results, domain, base, metric)
            for ax in row:
                if v:
                    ax.axhline(points(v[0], metric), color="grey", ls=ls, lw=1, label=base)
        row[0].set_xlabel("pretraining minutes")
        row[1].set_xlabel("images seen")
        for ax in row:
            ax.set_ylabel(f"{domain}: {metric} (%)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def domains_of(results: list[dict]) -> list[str]:
    """The domains the results hold, in DOMAIN_TASKS' order."""
    return [d for d in DOMAIN_TASKS if any(r["domain"] == d for r in results)]


def budget(results: list[dict], domain: str) -> int:
    return max((r["images"] for r in results if r["domain"] == domain and r["final"]), default=0)


def section(results: list[dict], machine: str, figure_path: str | None) -> list[str]:
    domains = domains_of(results)
    lines = [
        f"Written by `bench/claims.py` on {machine}; every arm pretrains "
        + ", ".join(f"{budget(results, d):,} images on {d}" for d in domains)
        + ". One seed unless a cell says (n) seeds (mean ± sd); values in %, depth RMSE in the scenes' units.",
        "",
        *overview(results, domains),
    ]
    for title, paper, rows in CLAIMS:
        kept = [r for r in rows if r[0] in domains]
        if kept:
            lines += ["", *claim_table(results, title, paper, kept)]
    lines += ["", *efficiency(results, domains)]
    if figure_path:
        lines += ["", f"![probe accuracy against pretraining minutes and images seen]({figure_path})"]
    return lines


def write_section(results: list[dict], md: Path, figure_path: Path, machine: str, tag: str = "") -> None:
    """Rewrite the section between its marks (added at the end of ``md`` the first time), the rest of the file kept."""
    start, end, title = marks(tag)
    domains = domains_of(results)
    drawn = figure(results, domains, figure_path)
    rel = (
        str(drawn.relative_to(md.parent))
        if drawn and drawn.is_relative_to(md.parent)
        else (str(drawn) if drawn else None)
    )
    body = "\n".join(section(results, machine, rel))
    text = md.read_text() if md.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{title}\n\n{start}\n{body}\n{end}\n"
    md.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    a = p.parse_args()
    results = json.loads(a.results.read_text())
    print("\n".join(section(results, "(this machine)", None)))


if __name__ == "__main__":
    main()
