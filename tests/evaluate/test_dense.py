import math

import pytest
import torch
import torch.nn.functional as F

from openjepa.data import DataError, UnreadableImage, resize_center_crop
from openjepa.data.dense_folder import IGNORE
from openjepa.evaluate.dense import depth_probe, seg_logits, seg_probe
from openjepa.evaluate.dense_features import dense_features, dense_pixels, fit_pair, raw_pixel_tokens
from openjepa.evaluate.dense_scores import depth_scores, depth_sums, seg_confusion, seg_scores
from openjepa.models.vit import VisionTransformer

GRID, PATCH, DIM, CLASSES = 8, 8, 16, 4
FAST = {"lrs": (1e-2, 1e-1), "wds": (0.0,), "steps": 150}  # the grid point that wins, and one that loses


def gaussian_tokens(n, seed):
    return torch.randn(n, GRID, GRID, DIM, generator=torch.Generator().manual_seed(seed))


def planted_seg(n, seed, per_patch=False):
    """Gaussian tokens labelled by a fixed linear map: pixel labels are the argmax of the map's
    logits upsampled bilinearly (what a linear head computes), or, ``per_patch``, of each token's
    own logits repeated over its patch."""
    tokens = gaussian_tokens(n, seed)
    logits = tokens @ torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(99))
    if per_patch:
        seg = logits.argmax(-1).repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
    else:
        seg = F.interpolate(logits.permute(0, 3, 1, 2), scale_factor=PATCH, mode="bilinear").argmax(1)
    return tokens.half(), seg.to(torch.uint8)


def planted_depth(n, seed):
    """Gaussian tokens whose pixels' log-depths are a fixed linear map of their patch's token."""
    tokens = gaussian_tokens(n, seed)
    log_depth = tokens @ (0.1 * torch.randn(DIM, PATCH * PATCH, generator=torch.Generator().manual_seed(7))) + 1.0
    depth = log_depth.exp().view(n, GRID, GRID, PATCH, PATCH).permute(0, 1, 3, 2, 4).reshape(n, GRID * PATCH, -1)
    return tokens.half(), depth


def test_seg_probe_recovers_a_planted_linear_map():
    (x, y), (xt, yt) = planted_seg(150, 0), planted_seg(60, 1)
    result = seg_probe(x, y, xt, yt, CLASSES, **FAST)
    assert result["miou"] > 0.95 and result["pixel_acc"] > 0.97
    assert result["classes_scored"] == CLASSES and result["train_size"] + result["val_size"] == 150


def test_seg_probe_on_labels_unrelated_to_the_tokens_is_near_chance():
    (x, y), (xt, yt) = planted_seg(150, 0), planted_seg(60, 1)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    assert seg_probe(x, shuffled, xt, yt, CLASSES, **FAST)["miou"] < 0.3  # chance: at most 1 / CLASSES


def test_seg_probe_on_labels_constant_over_patches_is_right_at_patch_centres_only():
    """Bilinear logits blend neighbouring tokens near a patch's edge (the module's note): scored on
    the 2x2 centre pixels of every patch the planted map is recovered, scored everywhere it is not."""
    (x, y), (xt, yt) = planted_seg(150, 0, per_patch=True), planted_seg(60, 1, per_patch=True)
    centre = torch.zeros(PATCH, dtype=torch.bool)
    centre[PATCH // 2 - 1 : PATCH // 2 + 1] = True
    edges = ~(centre[:, None] & centre[None, :]).repeat(GRID, GRID)
    centres_only = yt.clone()
    centres_only[:, edges] = IGNORE
    assert seg_probe(x, y, xt, centres_only, CLASSES, **FAST)["pixel_acc"] > 0.9
    assert seg_probe(x, y, xt, yt, CLASSES, **FAST)["pixel_acc"] < 0.85


def test_seg_probe_is_seeded_and_chooses_its_head_without_the_test_labels():
    (x, y), (xt, yt) = planted_seg(120, 0), planted_seg(40, 1)
    options = {**FAST, "steps": 40}
    first, again = seg_probe(x, y, xt, yt, CLASSES, **options), seg_probe(x, y, xt, yt, CLASSES, **options)
    assert first == again
    scrambled = seg_probe(
        x, y, xt, yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))], CLASSES, **options
    )
    assert (first["lr"], first["val_miou"]) == (scrambled["lr"], scrambled["val_miou"])
    assert first["miou"] > scrambled["miou"]
    assert seg_probe(x, y, xt, yt, CLASSES, **options, seed=1)["val_size"] == first["val_size"]


@pytest.mark.parametrize("size", [(32, 48), (3, 4)])
def test_seg_logits_are_interpolates_bilinear_resize(size):
    out = torch.randn(2, 3, 4, 6, 5, generator=torch.Generator().manual_seed(0))  # [G, B, h, w, C]
    expected = F.interpolate(
        out.permute(0, 1, 4, 2, 3).flatten(0, 1), size=size, mode="bilinear", align_corners=False
    ).view(2, 3, 5, *size)
    assert torch.allclose(seg_logits(out, size), expected, atol=1e-5)


def test_miou_by_hand_over_two_images():
    """Class by class (255 pixels left out; pairs are (label, prediction)):
    A: (0,0) (0,1) (1,1) (1,1) (2,2)    B: (0,0) (0,0) (0,3) (2,2) (2,0)
    class 0: 3 hits, 5 labelled, 4 predicted: IoU 3 / 6     class 1: 2 / (2 + 3 - 2) = 2/3
    class 2: 2 / (3 + 2 - 2) = 2/3    class 3: predicted once, never labelled: IoU 0 (counted)
    class 4: neither labelled nor predicted: not counted.   mIoU = (1/2 + 2/3 + 2/3 + 0) / 4."""
    labels = torch.tensor([[[0, 0, 1], [1, IGNORE, 2]], [[0, 0, 0], [2, 2, IGNORE]]])
    preds = torch.tensor([[[0, 1, 1], [1, 2, 2]], [[0, 0, 3], [2, 0, 1]]])
    confusion = seg_confusion(preds, labels, num_classes=5)
    assert torch.equal(confusion, seg_confusion(preds[0], labels[0], 5) + seg_confusion(preds[1], labels[1], 5))
    scores = seg_scores(confusion)
    assert scores["miou"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3 + 0) / 4)
    assert scores["per_class_iou"] == pytest.approx([1 / 2, 2 / 3, 2 / 3, 0.0, None])
    assert scores["pixel_acc"] == pytest.approx(7 / 10) and scores["classes_scored"] == 4


def test_depth_metrics_by_hand():
    """Valid (gt, pred): (1, 1.2) (2, 1) (4, 4) (2, -1); 0 and NaN ground truths are left out.
    RMSE = sqrt((0.04 + 1 + 0 + 9) / 4); AbsRel = (0.2 + 0.5 + 0 + 1.5) / 4; delta1: 1.2 and 1 are
    under 1.25, a ratio of 2 and a negative prediction are not."""
    gt = torch.tensor([[1.0, 2.0, 0.0], [4.0, math.nan, 2.0]])
    pred = torch.tensor([[1.2, 1.0, 5.0], [4.0, 3.0, -1.0]])
    scores = depth_scores(depth_sums(pred, gt))
    assert scores["rmse"] == pytest.approx(math.sqrt(10.04 / 4))
    assert scores["abs_rel"] == pytest.approx(2.2 / 4)
    assert scores["delta1"] == 0.5 and scores["valid_pixels"] == 4


def test_depth_probe_recovers_a_planted_linear_log_depth_and_not_from_shuffled_tokens():
    (x, y), (xt, yt) = planted_depth(200, 0), planted_depth(60, 1)
    y[:, :4] = 0.0  # invalid rows: neither trained on nor scored
    result = depth_probe(x, y, xt, yt, **FAST)
    assert result["rmse"] < 0.01 * yt.mean() and result["delta1"] == 1.0 and result["abs_rel"] < 0.005
    shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(3))]
    control = depth_probe(shuffled, y, xt, yt, **FAST)
    assert control["rmse"] > 50 * result["rmse"] and control["delta1"] < 0.7


def test_depth_probe_linear_target_recovers_depth_linear_in_the_tokens():
    (x, y), (xt, yt) = planted_depth(100, 0), planted_depth(30, 1)
    result = depth_probe(x, y.log() + 5, xt, yt.log() + 5, target="linear", **FAST)
    assert result["rmse"] < 0.01 and result["target"] == "linear"


def test_raw_pixel_tokens_hold_each_patch_and_round_trip():
    images = torch.rand(2, 3, 12, 8, generator=torch.Generator().manual_seed(0))
    tokens = raw_pixel_tokens(images, 4)
    assert tokens.shape == (2, 3, 2, 4 * 4 * 3)
    assert torch.equal(tokens[1, 2, 1], images[1, :, 8:12, 4:8].permute(1, 2, 0).flatten())
    back = tokens.view(2, 3, 2, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 12, 8)
    assert torch.equal(back, images)
    with pytest.raises(ValueError, match="does not divide"):
        raw_pixel_tokens(images, 5)


def test_targets_follow_their_image_through_resize_and_centre_crop():
    """A bright rectangle off-centre in a wide image, labelled 1: after the resize and centre crop
    the label map still covers the bright pixels (a crop offset or a transposed size would not)."""
    image = torch.zeros(1, 30, 50)
    image[:, 6:21, 10:36] = 1.0
    seg, depth = (image[0] > 0.5).long(), 1.0 + image[0]
    resized, target = fit_pair(image, {"seg": seg, "depth": depth}, (16, 16), "pair")
    assert torch.equal(resized, resize_center_crop(image[None], (16, 16))[0])
    bright = resized[0] > 0.5
    assert (target["seg"].bool() == bright).float().mean() > 0.98 and target["seg"].dtype == torch.uint8
    assert ((target["depth"] > 1.5) == bright).float().mean() > 0.98


def test_depth_shrinks_by_the_mean_of_valid_pixels_only():
    depth = torch.full((32, 32), 2.0)
    depth[::2, ::2] = 0.0
    depth[1::2, 1::2] = math.nan
    depth[:8] = 0.0  # a band with no measurement at all stays invalid
    _, target = fit_pair(torch.rand(3, 32, 32), {"depth": depth}, (16, 16), "pair")
    assert torch.all(target["depth"][4:] == 2.0) and torch.all(target["depth"][:4] == 0.0)


class Pairs(torch.utils.data.Dataset):
    """Images of varying sizes with seg and depth derived from their pixels; ``broken`` unreadable."""

    def __init__(self, n, broken=()):
        self.n, self.broken = n, set(broken)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.broken:
            raise UnreadableImage(f"image{i}.png", "broken")
        image = torch.rand(3, 20 + i % 3, 24, generator=torch.Generator().manual_seed(i))
        return image, {"seg": (image[0] > 0.5).long(), "depth": 1.0 + image[1]}


def tiny_encoder():
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    encoder.mean, encoder.std = [0.5] * 3, [0.25] * 3
    return encoder


def test_dense_features_give_a_token_grid_with_its_targets_and_skip_unreadable_images():
    encoder, data = tiny_encoder(), Pairs(12, broken=[3])
    feats = dense_features(encoder, data, batch_size=5, progress=False)
    assert feats.tokens.shape == (11, 4, 4, 32) and feats.tokens.dtype == torch.float16
    assert feats.seg.shape == feats.depth.shape == (11, 16, 16) and feats.skipped == ["image3.png"]
    image, target = fit_pair(*data[4], (16, 16), "item 4")
    with torch.no_grad():
        expected = encoder((image[None] - 0.5) / 0.25)[0]
    assert torch.allclose(feats.tokens[3].flatten(0, 1).float(), expected, atol=2e-2)  # item 4 is the 4th kept
    assert torch.equal(feats.seg[3], target["seg"])
    pixels = dense_pixels(data, (16, 16), 4)
    assert pixels.tokens.shape == (11, 4, 4, 48) and torch.equal(pixels.seg, feats.seg)
    # the probes train on what the extraction returns (inference tensors included)
    assert 0 <= seg_probe(feats.tokens, feats.seg, feats.tokens, feats.seg, 2, steps=3)["miou"] <= 1
    assert depth_probe(feats.tokens, feats.depth, feats.tokens, feats.depth, steps=3)["rmse"] >= 0


@pytest.mark.parametrize(
    "target, match",
    [
        ({"seg": torch.zeros(5, 6, dtype=torch.long)}, r"its seg map is \(5, 6\) but its image is \(8, 8\)"),
        ({"seg": torch.full((8, 8), 300)}, "seg values must be 0..255"),
        ({"depth": torch.ones(8, 8), "mask": torch.ones(8, 8)}, "'seg' and / or 'depth', got \\['depth', 'mask'\\]"),
        (torch.zeros(8, 8), "'seg' and / or 'depth', got Tensor"),
    ],
)
def test_a_bad_dense_target_names_its_item(target, match):
    with pytest.raises(DataError, match="item 7: .*" + match):
        fit_pair(torch.rand(3, 8, 8), target, (8, 8), "item 7")


def test_a_label_beyond_num_classes_is_refused():
    (x, y), (xt, yt) = planted_seg(10, 0), planted_seg(4, 1)
    with pytest.raises(DataError, match="test seg labels hold class 3, not below num_classes=3"):
        seg_probe(x, y.clamp_max(2), xt, yt, 3, steps=1)


def test_the_best_head_is_picked_by_its_direction_and_a_nan_score_never_wins():
    from openjepa.evaluate.dense import pick_head

    assert pick_head([0.2, math.nan, 0.5, 0.4], True, "x") == 2  # mIoU: higher
    assert pick_head([0.2, math.nan, 0.5, 0.1], False, "x") == 3  # RMSE: lower
    assert pick_head([math.nan, 3.0], False, "x") == 1
    with pytest.raises(DataError, match="the 2 held-out image.s. have nothing to choose the head on"):
        pick_head([math.nan, math.nan], True, "the 2 held-out image(s) have nothing")


def test_a_seg_probe_whose_held_out_images_are_all_unlabelled_says_so():
    x, y = planted_seg(40, 0)
    xt, yt = planted_seg(10, 1)
    with pytest.raises(DataError, match="held-out training image.s. have no labelled pixel to choose the head on"):
        seg_probe(x, torch.full_like(y, IGNORE), xt, yt, CLASSES, **FAST)
