import json

import numpy as np
import pytest
import torch

from conftest import labelled_folder, tiny_config
from openjepa.cli import main
from openjepa.data import ArrayDataset
from openjepa.evaluate import (
    attentive_probe,
    cached_extract,
    evaluate,
    extract,
    knn_predict,
    linear_probe,
    lowshot_subset,
    rankme,
    stratified_split,
)
from openjepa.evaluate.features import cache_path, prepare
from openjepa.models.vit import VisionTransformer
from openjepa.pretrain import train


def planted(n, dim=32, classes=5, seed=0):
    """Gaussian features labelled by a fixed linear map: a linear probe can be perfect."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, classes, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, dim, generator=g)
    return x, (x @ w).argmax(1)


def test_linear_probe_recovers_a_planted_linear_labelling():
    (x, y), (xt, yt) = planted(4000), planted(2000, seed=1)
    result = linear_probe(x, y, xt, yt, steps=600)
    assert result["test_acc"] > 0.95
    assert result["train_size"] + result["val_size"] == 4000


def test_linear_probe_never_looks_at_the_test_labels():
    """The head is chosen on the validation split: scrambling the test labels changes the test
    accuracy and nothing else."""
    (x, y), (xt, yt) = planted(1500), planted(500, seed=1)
    true = linear_probe(x, y, xt, yt, steps=200)
    scrambled = linear_probe(
        x, y, xt, yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))], steps=200
    )
    assert (true["lr"], true["wd"], true["val_acc"]) == (scrambled["lr"], scrambled["wd"], scrambled["val_acc"])
    assert true["test_acc"] > 0.8 > scrambled["test_acc"]


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = torch.arange(1000) % 4
    fit, val = stratified_split(y, 0.1, seed=3)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == 1000
    assert torch.bincount(y[val]).tolist() == [25] * 4
    assert torch.equal(val, stratified_split(y, 0.1, seed=3)[1])
    assert not torch.equal(val, stratified_split(y, 0.1, seed=4)[1])


def brute_force_knn(train_x, train_y, query, k, temperature, classes):
    """The definition, one query and one neighbour at a time."""
    out = []
    for q in query:
        sims = [(float(torch.dot(q / q.norm(), t / t.norm())), int(label)) for t, label in zip(train_x, train_y)]
        votes = [0.0] * classes
        for sim, label in sorted(sims, key=lambda s: -s[0])[:k]:
            votes[label] += np.exp(sim / temperature)
        out.append(int(np.argmax(votes)))
    return out


def test_knn_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    query = torch.randn(25, 8, generator=g)
    preds = knn_predict(train_x, train_y, query, ks=(1, 5, 20), temperature=0.07, num_classes=3, chunk=7)
    for k in (1, 5, 20):
        assert preds[k].tolist() == brute_force_knn(train_x, train_y, query, k, 0.07, 3)


def test_lowshot_subsets_are_class_balanced_and_reproducible():
    y = torch.arange(3000) % 10
    a = lowshot_subset(y, 0.01, seed=0)
    assert torch.bincount(y[a], minlength=10).tolist() == [3] * 10
    assert torch.equal(a, lowshot_subset(y, 0.01, seed=0))
    assert not torch.equal(a, lowshot_subset(y, 0.01, seed=1))
    assert torch.bincount(y[lowshot_subset(y, 0.1, seed=2)]).tolist() == [30] * 10
    with pytest.raises(ValueError, match="fraction"):
        lowshot_subset(y, 0.0, seed=0)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_rankme_of_a_rank_k_matrix_is_k(k):
    g = torch.Generator().manual_seed(k)
    left = torch.linalg.qr(torch.randn(500, k, generator=g))[0]
    right = torch.linalg.qr(torch.randn(64, k, generator=g))[0]
    assert rankme(left @ right.T) == pytest.approx(k, rel=1e-3)
    assert 0.6 * k < rankme(torch.randn(500, k, generator=g) @ torch.randn(k, 64, generator=g)) <= k + 1e-3


def tiny_encoder():
    torch.manual_seed(0)
    encoder = VisionTransformer(16, 4, 1, embed_dim=32, depth=5, num_heads=4).eval()
    encoder.mean, encoder.std = [0.3], [0.4]
    return encoder


def test_extraction_equals_a_direct_forward_pass(tmp_path):
    encoder = tiny_encoder()
    images = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(images, list(range(10)))
    feats = extract(encoder, data, batch_size=4, patches=True, progress=False)
    with torch.no_grad():
        x = (images - 0.3) / 0.4
        direct = encoder(x)
        blocks = encoder.intermediates(x, layers=4, norm=True)
    torch.testing.assert_close(feats.pooled, direct.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.last4, torch.cat([b.mean(1) for b in blocks], 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.patches.float(), direct, atol=1e-2, rtol=1e-2)  # stored in fp16
    assert feats.labels.tolist() == list(range(10))
    # the cache returns the same arrays, and a corrupt cache file is recomputed, not trusted
    path = cache_path(tmp_path, test="x")
    first = cached_extract(encoder, data, path, patches=True, progress=False)
    assert path.exists() and torch.equal(first.pooled, cached_extract(encoder, data, path, progress=False).pooled)
    path.write_bytes(b"garbage")
    assert torch.equal(first.pooled, cached_extract(encoder, data, path, progress=False).pooled)


def test_prepare_resizes_to_the_training_size():
    encoder = tiny_encoder()
    x = prepare(torch.full((2, 1, 32, 40), 0.7), encoder)
    assert x.shape == (2, 1, 16, 16)
    torch.testing.assert_close(x, torch.full_like(x, (0.7 - 0.3) / 0.4))


def test_attentive_probe_finds_the_one_informative_token():
    """The class is written into one token at a random position among noise tokens: pooling
    dilutes it, a learned query can attend to it."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(4, 16, generator=torch.Generator().manual_seed(5)) * 3

    def make(n):
        tokens = torch.randn(n, 12, 16, generator=g)
        y = torch.randint(0, 4, (n,), generator=g)
        pos = torch.randint(0, 12, (n,), generator=g)
        tokens[torch.arange(n), pos] = codes[y] + 0.1 * torch.randn(n, 16, generator=g)
        return tokens.half(), y

    (x, y), (xt, yt) = make(2000), make(500)
    result = attentive_probe(x, y, xt, yt, epochs=6, batch_size=64, lr=3e-3)
    assert result["test_acc"] > 0.9


def test_eval_command_writes_one_result_with_baselines(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", data={"in_chans": 1, "mean": [0.5], "std": [0.25]}), max_steps=2)
    data = labelled_folder(tmp_path / "data", vary=True)  # images of several sizes are brought to the encoder's
    ckpt = tmp_path / "run/checkpoints/latest.pt"
    assert (
        main(
            [
                "eval",
                str(ckpt),
                "--data",
                str(data),
                "--no-progress",
                "--precision",
                "fp32",
                "--linear-steps",
                "50",
                "--attentive-epochs",
                "1",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "run/eval/latest_target.json").read_text())
    assert set(record["results"]) == {"ijepa", "random", "pixels"}
    assert set(record["results"]["ijepa"]) >= {"linear", "knn", "lowshot", "attentive", "rankme"}
    assert "attentive" not in record["results"]["pixels"]
    assert record["train_size"] == 24 and record["test_size"] == 24 and record["hardware"]["device"] == "cpu"
    assert record["results"]["pixels"]["linear"]["test_acc"] == 1.0  # the classes differ in raw pixels
    assert "| ijepa |" in capsys.readouterr().out
    assert list((tmp_path / "run/eval/cache").glob("features_*.pt"))


def test_train_limit_evaluates_on_a_seeded_subset_of_the_training_split(tmp_path):
    train(tiny_config(tmp_path / "run", data={"in_chans": 1, "mean": [0.5], "std": [0.25]}), max_steps=1)
    data, ckpt = labelled_folder(tmp_path / "data"), tmp_path / "run/checkpoints/latest.pt"
    records = [
        evaluate(
            ckpt,
            str(data),
            ("knn",),
            ("random", "pixels"),
            train_limit=limit,
            out=tmp_path / f"{limit}.json",
            progress=False,
            precision="fp32",
        )
        for limit in (16, 16, None)
    ]
    assert [r["train_size"] for r in records] == [16, 16, 24] and records[0]["test_size"] == 24

    def accuracies(record):  # everything but the probes' wall times
        return {
            enc: {
                k: ({n: x for n, x in v.items() if n != "wall_s"} if isinstance(v, dict) else v) for k, v in res.items()
            }
            for enc, res in record["results"].items()
        }

    assert accuracies(records[0]) == accuracies(
        records[1]
    )  # the same subset again (and cached apart from the full set)
    assert len(list((tmp_path / "cache").glob("features_*.pt"))) == 8  # 2 encoders x train, test x limited, full
    with pytest.raises(ValueError, match="train_limit"):
        evaluate(ckpt, str(data), ("knn",), (), train_limit=3, out=tmp_path / "bad.json", progress=False)


def test_eval_rejects_bad_input_with_one_line(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", data={"in_chans": 1, "mean": [0.5], "std": [0.25]}), max_steps=1)
    ckpt = str(tmp_path / "run/checkpoints/latest.pt")
    assert main(["eval", ckpt, "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["eval", ckpt, "--data", str(labelled_folder(tmp_path / "d")), "--protocol", "linear,knnn"]) == 2
    assert "knnn" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert not (tmp_path / "run/eval").exists()


def test_online_monitor_logs_knn_and_rank_without_changing_training(tmp_path):
    """monitor.csv gets one row per epoch; the weights are bitwise those of a run without it."""
    watched = train(tiny_config(tmp_path / "watched", logging={"monitor_every": 1, "monitor_images": 40}))
    plain = train(tiny_config(tmp_path / "plain"))
    rows = (watched / "monitor.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,knn_acc,rankme,feature_std" and len(rows) == 3
    for row in rows[1:]:
        step, epoch, knn, rank, std = map(float, row.split(","))
        assert 0.0 <= knn <= 1.0 and 1.0 <= rank <= 192 and std > 0
    a = torch.load(watched / "checkpoints/latest.pt", weights_only=True)
    b = torch.load(plain / "checkpoints/latest.pt", weights_only=True)
    for key in ("encoder", "target_encoder", "predictor"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
