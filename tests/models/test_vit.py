import math

import pytest
import torch

from openjepa.models.vit import VIT_SIZES, Attention, build_encoder, count_params, sincos_pos_embed_2d


def test_pos_embed_matches_direct_formula():
    dim, grid = 16, (3, 5)
    emb = sincos_pos_embed_2d(dim, grid)
    assert emb.shape == (15, dim)
    quarter = dim // 4
    for row in range(grid[0]):
        for col in range(grid[1]):
            n = row * grid[1] + col
            for i in range(quarter):
                omega = 1 / 10000 ** (i / quarter)
                # first half encodes the column, second half the row; sin then cos in each half
                assert emb[n, i].item() == pytest.approx(math.sin(col * omega), abs=1e-6)
                assert emb[n, quarter + i].item() == pytest.approx(math.cos(col * omega), abs=1e-6)
                assert emb[n, 2 * quarter + i].item() == pytest.approx(math.sin(row * omega), abs=1e-6)
                assert emb[n, 3 * quarter + i].item() == pytest.approx(math.cos(row * omega), abs=1e-6)


def test_pos_embed_is_fixed_not_trained():
    enc = build_encoder("vit_tiny", 16, 4)
    assert "pos_embed" in enc.state_dict()
    assert all("pos_embed" not in name for name, _ in enc.named_parameters())


def test_sdpa_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(24, 3)
    x = torch.randn(2, 7, 24)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_permuting_kept_indices_permutes_the_output():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", 16, 4).eval()
    images = torch.randn(2, 3, 16, 16)
    keep = torch.tensor([[0, 3, 5, 9, 15], [1, 2, 8, 12, 14]])
    perm = torch.tensor([3, 0, 4, 1, 2])
    out = enc(images, keep)
    torch.testing.assert_close(enc(images, keep[:, perm]), out[:, perm], atol=1e-5, rtol=1e-5)


def test_keeping_every_patch_equals_the_full_forward():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", 16, 4).eval()
    images = torch.randn(2, 3, 16, 16)
    keep = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(enc(images, keep), enc(images))


def test_non_square_images_and_grayscale():
    enc = build_encoder("vit_tiny", (16, 24), 8, in_chans=1)
    assert enc.grid == (2, 3)
    assert enc(torch.randn(2, 1, 16, 24)).shape == (2, 6, 192)
    with pytest.raises(ValueError, match="patch size 5 does not divide"):
        build_encoder("vit_tiny", 16, 5)


def test_init_follows_the_reference():
    torch.manual_seed(0)
    enc = build_encoder("vit_small", 32, 4)
    w = enc.blocks[0].mlp.fc1.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    # the reference truncates at absolute +-2, i.e. 100 std: in effect a plain normal(0, 0.02)
    assert w.abs().max().item() > 0.06
    assert enc.blocks[0].mlp.fc1.bias.abs().sum() == 0
    assert enc.norm.weight.eq(1).all() and enc.norm.bias.eq(0).all()


# Encoder parameter counts of the six sizes at 224/16 (patch embed + blocks + final norm), from
# the width, depth and MLP width of the paper's table.
@pytest.mark.parametrize("name", list(VIT_SIZES))
def test_every_size_builds_with_the_expected_parameter_count(name):
    s = VIT_SIZES[name]
    with torch.device("meta"):
        enc = build_encoder(name, 224, 16)
    d, hidden = s.dim, int(s.dim * s.mlp_ratio)
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    expected = (3 * 16 * 16 * d + d) + s.depth * per_block + 2 * d
    assert count_params(enc) == expected
    assert len(enc.blocks) == s.depth and enc.num_heads == s.heads
    if name == "vit_giant":
        assert hidden == 6144
    if name == "vit_base":
        assert 85e6 < expected < 87e6  # ViT-B/16 without a head: 85.8M


def test_bf16_attention_with_a_gradient_runs_in_fp32_on_the_cpu():
    """CPU flash-attention's bf16 backward is slow, so training attends in fp32: the output is fp32
    SDPA of the same bf16 inputs, rounded back to bf16; without a gradient bf16 SDPA runs as is."""
    import torch.nn.functional as F

    from openjepa.models.vit import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.to(torch.bfloat16))
    out.float().sum().backward()
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(qf, kf, vf).sum().backward()
    for low, high in ((q, qf), (k, kf), (v, vf)):
        assert low.grad.dtype == torch.bfloat16
        torch.testing.assert_close(low.grad.float(), high.grad, rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        plain = attend(q.detach(), k.detach(), v.detach())
    torch.testing.assert_close(
        plain, F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach()), rtol=0, atol=0
    )
