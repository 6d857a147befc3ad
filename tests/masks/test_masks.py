import hashlib
import itertools

import numpy as np
import pytest
import torch

from openjepa.masks import block_size, build_mask_sampler, pack

GRID = (8, 8)


def coverage(sampler, n_batches=150, batch=32, seed=0):
    """Per-position frequency of being in a target block and in the context."""
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1]
    tgt, ctx, total = torch.zeros(n), torch.zeros(n), 0
    for _ in range(n_batches):
        c, t = sampler(batch, g)
        ctx += torch.bincount(c.flatten(), minlength=n)
        tgt += torch.bincount(t.flatten(), minlength=n)
        total += batch
    return tgt.reshape(GRID) / total, ctx.reshape(GRID) / total


def achievable_sizes(grid, scale, aspect):
    """Every (h, w) that some scale and aspect in range round to (dense scan)."""
    return {block_size(grid, s, a) for s in np.linspace(*scale, 60) for a in np.linspace(*aspect, 60)}


def as_rectangle(idx, width):
    rows, cols = idx // width, idx % width
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    return h, w, h * w == len(idx)


@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (6, 10)])
def test_multiblock_targets_are_rectangles_within_scale_and_aspect(grid):
    sampler = build_mask_sampler("multiblock", grid, min_keep=4)
    allowed = achievable_sizes(grid, (0.15, 0.2), (0.75, 1.5))
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        c, t = sampler(8, g)
        assert t.shape[:2] == (8, 4)
        for block in t.reshape(-1, t.size(-1)):
            h, w, full = as_rectangle(block, grid[1])
            assert full and (h, w) in allowed
            assert 0.15 * 0.5 <= h * w / (grid[0] * grid[1]) <= 0.2 * 1.5  # rounding slack on tiny grids


def test_multiblock_context_is_disjoint_from_targets_and_large_enough():
    sampler = build_mask_sampler("multiblock", GRID, min_keep=4)
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        c, t = sampler(16, g)
        for ci, ti in zip(c, t):
            assert len(set(ci.tolist())) == len(ci) >= 4
            assert torch.equal(ci, ci.sort().values)
            assert not set(ci.tolist()) & set(ti.flatten().tolist())


def test_allow_overlap_lets_context_cover_targets():
    sampler = build_mask_sampler("multiblock", GRID, min_keep=4, allow_overlap=True)
    c, t = sampler(64, torch.Generator().manual_seed(0))
    overlaps = [len(set(ci.tolist()) & set(ti.flatten().tolist())) for ci, ti in zip(c, t)]
    assert max(overlaps) > 0


def test_multiblock_coverage_is_symmetric_under_flips():
    tgt, ctx = coverage(build_mask_sampler("multiblock", GRID, min_keep=4))
    for freq in (tgt, ctx):
        for flipped in (freq.flip(0), freq.flip(1)):
            # ~5000 samples: binomial std of a frequency <= 0.007; allow 5 std
            assert (freq - flipped).abs().max() < 0.035
    assert tgt[-1].min() > 0.05 and tgt[:, -1].min() > 0.05  # last row and column reachable
    assert ctx[-1].min() > 0.05 and ctx[:, -1].min() > 0.05


def test_reference_sampler_shows_its_known_biases():
    tgt, ctx = coverage(build_mask_sampler("multiblock", GRID, reference=True, min_keep=4), n_batches=40)
    assert tgt[-1].sum() == 0 and tgt[:, -1].sum() == 0  # never reaches the last row or column
    assert ctx[-1].sum() == 0 and ctx[:, -1].sum() == 0
    assert ctx[0].mean() > 2 * ctx[-2].mean()  # context piled into the top rows by the raster cut


def reference_digest(grid, min_keep, batches=6, batch=16, **options):
    sampler = build_mask_sampler("multiblock", grid, reference=True, min_keep=min_keep, **options)
    h = hashlib.sha256()
    torch.manual_seed(3)
    for b in range(batches):  # odd batches from a generator, even ones from the global RNG (as the reference)
        c, t = sampler(batch, torch.Generator().manual_seed(100 + b) if b % 2 else None)
        h.update(repr((c.dtype, tuple(c.shape), c.tolist(), t.dtype, tuple(t.shape), t.tolist())).encode())
    return h.hexdigest()[:16]


def test_reference_sampler_draws_exactly_what_it_drew_before():
    # Digests of the tensor-mask implementation (checked against the reference's step: same token
    # counts), recorded before it was rewritten on index lists; any change to the draws or to the
    # cut shows here.
    assert reference_digest((8, 8), 4) == "a1046725f02141dd"
    assert reference_digest((14, 14), 10) == "b5a7228390a4035e"
    assert reference_digest((7, 7), 2) == "c53a51b9700e4307"
    # small contexts: many fail 20 tries and let targets back in one by one (the relaxation path)
    assert reference_digest((14, 14), 25, context_scale=(0.25, 0.3)) == "25e0425a50cb9e70"


def test_reference_sampler_keeps_targets_out_of_the_context():
    sampler = build_mask_sampler("multiblock", (14, 14), reference=True)
    c, t = sampler(64, torch.Generator().manual_seed(0))
    overlaps = [bool(set(ci.tolist()) & set(ti.flatten().tolist())) for ci, ti in zip(c, t)]
    assert sum(overlaps) <= 2  # only where 20 tries found no room and a target was let back in


def test_sampling_is_reproducible_from_a_seed():
    sampler = build_mask_sampler("multiblock", (14, 14))
    a = sampler(8, torch.Generator().manual_seed(5))
    b = sampler(8, torch.Generator().manual_seed(5))
    c = sampler(8, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("name,ratio", [("block", 0.4), ("rasterized", 0.25), ("random", 0.4)])
def test_table6_strategies_give_the_papers_context_ratio_and_disjoint_sets(name, ratio):
    grid = (14, 14)
    sampler = build_mask_sampler(name, grid)
    c, t = sampler(32, torch.Generator().manual_seed(0))
    assert abs(c.size(1) / 196 - ratio) < 0.08
    for ci, ti in zip(c, t):
        assert not set(ci.tolist()) & set(ti.flatten().tolist())
        assert len(set(ti.flatten().tolist())) == ti.numel()


def test_rasterized_context_is_one_quadrant():
    c, t = build_mask_sampler("rasterized", GRID)(16, torch.Generator().manual_seed(0))
    assert t.shape == (16, 3, 16)
    quadrants = {
        frozenset(r * 8 + col for r, col in itertools.product(rows, cols))
        for rows in (range(4), range(4, 8))
        for cols in (range(4), range(4, 8))
    }
    for ci, ti in zip(c, t):
        assert frozenset(ci.tolist()) in quadrants
        assert {frozenset(b.tolist()) for b in ti} == quadrants - {frozenset(ci.tolist())}


def test_pack_keeps_everything_when_counts_agree_and_cuts_uniformly_otherwise():
    equal = torch.ones(5, 1, 10, dtype=torch.bool)
    assert torch.equal(pack(equal, None)[3, 0], torch.arange(10))
    masks = torch.ones(4000, 1, 10, dtype=torch.bool)
    masks[0, 0, 6:] = False  # the shortest has 6: every other row keeps a random 6 of its 10
    kept = pack(masks, torch.Generator().manual_seed(0))
    assert kept.shape == (4000, 1, 6)
    freq = torch.bincount(kept[1:].flatten(), minlength=10).float()
    assert (freq / freq.mean() - 1).abs().max() < 0.05  # the reference keeps only the first 6


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="unknown mask strategy"):
        build_mask_sampler("checkerboard", GRID)
    with pytest.raises(ValueError, match="target_scale"):
        build_mask_sampler("multiblock", GRID, target_scale=(0.3, 1.2))
    with pytest.raises(ValueError, match="unexpected keyword"):
        build_mask_sampler("random", GRID, num_targets=3)
    with pytest.raises(ValueError, match="min_keep"):
        build_mask_sampler("multiblock", GRID, min_keep=64)


def test_bucketed_contexts_have_few_lengths_lose_under_a_bucket_and_keep_the_statistics():
    """mask.bucket: every context length is a multiple of the bucket; against the same sampler
    without it, the mean length falls by less than one bucket, the contexts stay disjoint from the
    targets, the coverage stays symmetric, and the targets are untouched (same seed, same blocks)."""
    grid, bucket, batch = (14, 14), 8, 64
    plain = build_mask_sampler("multiblock", grid, min_keep=10)
    bucketed = build_mask_sampler("multiblock", grid, min_keep=10, bucket=bucket)
    lengths = {"plain": [], "bucketed": []}
    n = grid[0] * grid[1]
    ctx = torch.zeros(n)
    for name, sampler in (("plain", plain), ("bucketed", bucketed)):
        g = torch.Generator().manual_seed(3)
        for _ in range(60):
            c, t = sampler(batch, g)
            lengths[name].append(c.size(1))
            if name == "bucketed":
                assert c.size(1) % bucket == 0
                ctx += torch.bincount(c.flatten(), minlength=n)
                for ci, ti in zip(c[:8], t[:8]):
                    assert len(set(ci.tolist())) == len(ci)
                    assert not set(ci.tolist()) & set(ti.flatten().tolist())
    plain_mean, bucketed_mean = np.mean(lengths["plain"]), np.mean(lengths["bucketed"])
    assert plain_mean - bucket < bucketed_mean < plain_mean
    assert len(set(lengths["bucketed"])) < len(set(lengths["plain"]))
    freq = (ctx / ctx.sum()).reshape(grid)
    assert (freq - freq.flip(0)).abs().max() < 0.25 * freq.mean()
    assert (freq - freq.flip(1)).abs().max() < 0.25 * freq.mean()
    # the targets come from the same draws: bucketing only drops context tokens afterwards
    c1, t1 = plain(batch, torch.Generator().manual_seed(9))
    c2, t2 = bucketed(batch, torch.Generator().manual_seed(9))
    assert torch.equal(t1, t2)
    assert set(c2[0].tolist()) <= set(range(n)) - set(t2[0].flatten().tolist())


def test_a_context_shorter_than_one_bucket_is_kept_whole():
    counts = torch.zeros(2, 1, 20, dtype=torch.bool)
    counts[0, 0, :5] = True
    counts[1, 0, :7] = True
    packed = pack(counts, torch.Generator().manual_seed(0), bucket=8)
    assert packed.shape == (2, 1, 5)
