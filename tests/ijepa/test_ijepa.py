import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from openjepa.ijepa import IJEPA, build_ijepa, patchify_pixels
from openjepa.masks import build_mask_sampler
from openjepa.models.predictor import Predictor


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return build_ijepa(tiny_config(tmp_path))


def batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 16, 16, generator=g)
    context_idx, target_idx = build_mask_sampler("multiblock", (4, 4), min_keep=2)(b, g)
    return images, context_idx, target_idx


def test_target_is_layer_normed_target_encoder_output_at_each_block(model):
    images, _, target_idx = batch()
    with torch.no_grad():  # perturb the target encoder so it differs from the context encoder
        for p in model.target_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    target = model.forward_target(images, target_idx)
    full = model.target_encoder(images)
    for b in range(images.size(0)):
        for m in range(target_idx.size(1)):
            for k, patch in enumerate(target_idx[b, m].tolist()):
                expected = F.layer_norm(full[b, patch], (full.size(-1),))
                torch.testing.assert_close(target[b, m, k], expected, atol=1e-5, rtol=1e-5)


def test_multi_layer_targets_average_the_last_blocks_each_layer_normed(tmp_path):
    """meta.target_layers k: layer_norm(mean of layer_norm(block output)) over the last k blocks,
    written out here block by block; the encoder's final norm is not used."""
    torch.manual_seed(0)
    model = build_ijepa(tiny_config(tmp_path, meta={"target_layers": 2}))
    with torch.no_grad():  # a final norm that is not the identity: it must play no part
        model.target_encoder.norm.weight.mul_(3.0)
        model.target_encoder.norm.bias.add_(1.0)
    images, _, target_idx = batch()
    enc = model.target_encoder
    x = enc.patchify(images)
    outputs = []
    for blk in enc.blocks:
        x = blk(x)
        outputs.append(x)
    D = x.size(-1)
    mean = (F.layer_norm(outputs[-2], (D,)) + F.layer_norm(outputs[-1], (D,))) / 2
    expected = F.layer_norm(mean, (D,))
    target = model.forward_target(images, target_idx)
    for b in range(images.size(0)):
        torch.testing.assert_close(target[b], expected[b][target_idx[b]], atol=1e-5, rtol=1e-5)
    one = model.target_features(images)
    model.target_layers = 1  # the paper's target differs (it reads the final norm)
    assert not torch.allclose(one, model.target_features(images), atol=1e-2)
    with pytest.raises(ValueError, match="target_layers"):
        IJEPA(model.encoder, model.predictor, target_layers=len(model.encoder.blocks) + 1)
    with pytest.raises(ValueError, match="pixel targets"):
        IJEPA(model.encoder, model.predictor, target="pixels", target_layers=2)


def test_each_target_block_is_predicted_from_its_own_sequence():
    torch.manual_seed(0)
    pred = Predictor((4, 4), embed_dim=32, predictor_dim=16, depth=2, num_heads=2)
    context, context_idx = torch.randn(2, 5, 32), torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    target_idx = torch.tensor([[[10, 11], [12, 13]], [[0, 1], [14, 15]]])
    out = pred(context, context_idx, target_idx)
    assert out.shape == (2, 2, 2, 32)
    alone = pred(context, context_idx, target_idx[:, 1:])  # block 1 without block 0 beside it
    torch.testing.assert_close(out[:, 1:], alone, atol=1e-5, rtol=1e-5)
    moved = target_idx.clone()
    moved[:, 0] = torch.tensor([2, 3])  # moving block 0 must not change block 1's prediction
    torch.testing.assert_close(pred(context, context_idx, moved)[:, 1], out[:, 1], atol=1e-5, rtol=1e-5)


def test_gradients_reach_encoder_and_predictor_but_not_target(model):
    loss = model(*batch())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_ema_update_is_exact(model):
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = copy.deepcopy(model.target_encoder.state_dict())
    online = model.encoder.state_dict()
    model.update_target(0.9)
    for name, value in model.target_encoder.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * online[name])


def test_losses(model):
    pred, target = torch.tensor([0.0, 0.5, 3.0]), torch.zeros(3)
    model.loss = "smooth_l1"
    assert model.forward_loss(pred, target).item() == pytest.approx((0 + 0.125 + 2.5) / 3)
    model.loss = "l2"
    assert model.forward_loss(pred, target).item() == pytest.approx((0 + 0.25 + 9.0) / 3)


def test_pixel_targets_are_normalised_patches(tmp_path):
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16).sin()
    patches = patchify_pixels(images, 4)
    assert patches.shape == (2, 16, 48)
    raw = images[1, :, 4:8, 8:12].reshape(-1)  # patch (row 1, col 2) of image 1, channel-major
    torch.testing.assert_close(
        patches[1, 1 * 4 + 2], (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-3, rtol=1e-3
    )
    torch.manual_seed(0)
    model = build_ijepa(tiny_config(tmp_path, meta={"target": "pixels"}))
    images, c, t = batch()
    assert model.forward_context(images, c, t).shape[-1] == 48
    assert torch.isfinite(model(images, c, t))


def test_ijepa_rejects_unknown_options(model):
    with pytest.raises(ValueError, match="loss"):
        IJEPA(model.encoder, model.predictor, loss="l1")


def test_predictor_depth_follows_the_model_size_unless_given(tmp_path):
    from openjepa.config import Config, load_config
    from openjepa.ijepa import predictor_depth, resolve_config

    meta = Config().meta
    assert meta.pred_depth is None
    expected = {"vit_tiny": 6, "vit_base": 6, "vit_large": 12, "vit_huge": 12, "vit_giant": 16}
    for name, depth in expected.items():
        meta.model_name = name
        assert predictor_depth(meta) == depth, name
        loaded = load_config(None, [f"meta.model_name={name}"])
        assert loaded.meta.pred_depth is None  # validation only checks: the depth is resolved for the model
        assert resolve_config(loaded).meta.pred_depth == depth  # resolved, and saved so in config.yaml
    meta.pred_depth = 3
    assert predictor_depth(meta) == 3  # a config that sets it keeps its own
    assert (
        resolve_config(load_config(Path(__file__).parents[2] / "configs/vit_h14_in1k_ep300.yaml")).meta.pred_depth == 12
    )
    cfg = tiny_config(tmp_path)
    cfg.meta.pred_depth = None
    assert len(build_ijepa(cfg).predictor.predictor_blocks) == 6


def test_mask_groups_give_the_mean_over_images_of_each_groups_loss(tmp_path):
    """Contexts of different lengths in one batch (the loader's pack groups): the loss is the
    per-image mean of each group's own loss, one group alone is the plain forward bit for bit, and
    the regulariser sees every image of the batch."""
    torch.manual_seed(0)
    model = build_ijepa(tiny_config(tmp_path, meta={"variance_weight": 1.0, "covariance_weight": 0.1}))
    images, c1, t1 = batch(b=3, seed=1)
    _, c2, t2 = batch(b=5, seed=2)
    images = torch.cat([images, torch.randn(5, 3, 16, 16)])
    assert c1.size(1) != c2.size(1) or t1.size(2) != t2.size(2)  # the groups really differ in shape

    assert torch.equal(model(images[:3], [c1], [t1]), model(images[:3], c1, t1))
    grouped, targets = model(images, [c1, c2], [t1, t2], return_target=True)
    plain = IJEPA(model.encoder, model.predictor)  # the same networks, no regulariser
    plain.target_encoder = model.target_encoder
    per_group = [plain(images[:3], c1, t1), plain(images[3:], c2, t2)]
    context = [model.encoder(images[:3], c1), model.encoder(images[3:], c2)]
    expected = (3 * per_group[0] + 5 * per_group[1]) / 8 + model.regularizer(
        torch.cat([c.mean(1) for c in context])[:, None], 0
    )
    torch.testing.assert_close(grouped, expected, rtol=1e-5, atol=1e-6)
    assert [t.shape[:3] for t in targets] == [t1.shape, t2.shape]
    with pytest.raises(ValueError, match="mask groups"):
        model(images, [c1], [t1])
