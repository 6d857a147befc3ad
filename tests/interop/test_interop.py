import json
import pickle

import numpy as np
import pytest
import torch

import openjepa
from conftest import tiny_config
from openjepa.checkpoint import CheckpointError
from openjepa.cli import main
from openjepa.models.predictor import Predictor
from openjepa.models.vit import VisionTransformer
from openjepa.pretrain import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A short training run: its target and context encoders differ."""
    folder = tmp_path_factory.mktemp("run")
    torch.set_num_threads(2)
    train(tiny_config(folder), max_steps=3)
    return folder / "checkpoints/latest.pt"


def images(n=2, size=16, channels=3):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def reference_checkpoint(path):
    """Random weights in the reference repository's layout: module. prefixes, its entry names."""
    torch.manual_seed(1)
    encoder = VisionTransformer(32, 8, 3, embed_dim=384, depth=2, num_heads=6)
    target = VisionTransformer(32, 8, 3, embed_dim=384, depth=2, num_heads=6)
    predictor = Predictor((4, 4), 384, predictor_dim=96, depth=2, num_heads=6)
    prefixed = {
        name: {f"module.{k}": v for k, v in m.state_dict().items()}
        for name, m in (("encoder", encoder), ("target_encoder", target), ("predictor", predictor))
    }
    torch.save(
        {
            **prefixed,
            "opt": {"state": {}, "param_groups": []},
            "scaler": None,
            "epoch": 300,
            "loss": 0.1,
            "batch_size": 128,
            "world_size": 16,
            "lr": 1e-3,
        },
        path,
    )
    return encoder, target, predictor


def test_our_checkpoint_loads_target_or_context_encoder(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    target, context = openjepa.load_encoder(checkpoint), openjepa.load_encoder(checkpoint, which="context")
    assert not target.training
    for encoder, key in ((target, "target_encoder"), (context, "encoder")):
        for name, value in encoder.state_dict().items():
            assert torch.equal(value, state[key][name])
    assert not torch.allclose(target(images()), context(images()))
    with pytest.raises(ValueError, match="which"):
        openjepa.load_encoder(checkpoint, which="online")


def test_reference_checkpoint_loads_with_inferred_sizes(tmp_path):
    encoder, target, predictor = reference_checkpoint(tmp_path / "IN1K-vit.pth.tar")
    loaded = openjepa.load_encoder(tmp_path / "IN1K-vit.pth.tar")
    assert loaded.num_heads == 6 and loaded.grid == (4, 4) and len(loaded.blocks) == 2
    x = images(size=32)
    torch.testing.assert_close(loaded(x), target.eval()(x), rtol=0, atol=0)
    torch.testing.assert_close(
        openjepa.load_encoder(tmp_path / "IN1K-vit.pth.tar", "context")(x), encoder.eval()(x), rtol=0, atol=0
    )
    pred = openjepa.load_predictor(tmp_path / "IN1K-vit.pth.tar")
    z, c, t = torch.randn(2, 5, 384), torch.arange(5).expand(2, 5), torch.arange(5, 9).view(1, 1, 4).expand(2, 2, 4)
    torch.testing.assert_close(pred(z, c, t), predictor.eval()(z, c, t), rtol=0, atol=0)


def test_our_predictor_loads(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    pred = openjepa.load_predictor(checkpoint)
    assert all(torch.equal(v, state["predictor"][k]) for k, v in pred.state_dict().items())


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"encoder": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="holds more than weights and was refused"):
        openjepa.load_encoder(tmp_path / "evil.pt")


def test_hf_round_trip_is_exact(checkpoint, tmp_path):
    out = openjepa.export_encoder(checkpoint, "hf", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ijepa" and config["layer_norm_eps"] == 1e-6 and config["image_size"] == 16
    original, back = openjepa.load_encoder(checkpoint), openjepa.load_encoder(out)
    for name, value in original.state_dict().items():
        assert torch.equal(value, back.state_dict()[name]), name
    assert back.mean == original.mean


def test_hf_folder_loads_in_transformers_with_the_same_features(checkpoint, tmp_path):
    import transformers  # a dev extra: installed by `make test`

    out = openjepa.export_encoder(checkpoint, "hf", tmp_path / "hf")
    hf = transformers.IJepaModel.from_pretrained(out).eval()
    x = images()
    with torch.no_grad():
        ours = openjepa.load_encoder(checkpoint)(x)
        theirs = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_timm_export_holds_our_weights_and_its_build_arguments(checkpoint, tmp_path):
    from safetensors.torch import load_file

    out = openjepa.export_encoder(checkpoint, "timm", tmp_path / "timm")
    info = json.loads((out / "timm.json").read_text())
    assert info["kwargs"]["class_token"] is False and info["kwargs"]["fc_norm"] is False
    state, encoder = load_file(str(out / "model.safetensors")), openjepa.load_encoder(checkpoint)
    assert set(state) == set(encoder.state_dict())
    assert state["pos_embed"].shape == (1, 16, 192)


def test_timm_model_gives_the_same_features(checkpoint, tmp_path):
    import timm  # the timm extra: installed by `make test`
    from safetensors.torch import load_file

    out = openjepa.export_encoder(checkpoint, "timm", tmp_path / "timm")
    info = json.loads((out / "timm.json").read_text())
    model = timm.create_model(info["architecture"], pretrained=False, **info["kwargs"]).eval()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), openjepa.load_encoder(checkpoint).pooled(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(model.forward_features(x), openjepa.load_encoder(checkpoint)(x), atol=1e-4, rtol=0)


def test_safetensors_export_rebuilds_the_encoder(checkpoint, tmp_path):
    out = openjepa.export_encoder(checkpoint, "safetensors", tmp_path / "st", which="context")
    assert json.loads((out / "encoder.json").read_text())["which"] == "context"
    x = images()
    torch.testing.assert_close(
        openjepa.load_encoder(out)(x), openjepa.load_encoder(checkpoint, "context")(x), rtol=0, atol=0
    )


def test_position_embedding_interpolation(checkpoint):
    encoder = openjepa.load_encoder(checkpoint)
    assert torch.equal(encoder.pos_embed_for(encoder.grid), encoder.pos_embed)  # exact at the training size
    wide = encoder.pos_embed_for((4, 8))
    assert wide.shape == (1, 32, 192)
    # bicubic resampling keeps a smooth field: every new position is close to an original one
    dist = torch.cdist(wide[0], encoder.pos_embed[0]).min(1).values
    assert dist.max() < 0.5 * torch.cdist(encoder.pos_embed[0], encoder.pos_embed[0]).max()
    assert encoder(torch.randn(1, 3, 16, 32)).shape == (1, 32, 192)


def test_feature_api(checkpoint):
    encoder, x = openjepa.load_encoder(checkpoint), images()
    with torch.no_grad():
        tokens = encoder(x)
        torch.testing.assert_close(encoder.pooled(x), tokens.mean(1))
        (last,) = encoder.intermediates(x, layers=[-1], norm=True)
        torch.testing.assert_close(last, tokens)
        four = encoder.intermediates(x, layers=4)
    assert len(four) == 4 and all(t.shape == tokens.shape for t in four)
    assert not torch.allclose(four[0], four[1])
    with pytest.raises(ValueError, match="layers"):
        encoder.intermediates(x, layers=13)


def test_preprocess_resizes_crops_and_normalises(checkpoint):
    from PIL import Image

    encoder = openjepa.load_encoder(checkpoint)
    pil = Image.fromarray(np.full((30, 60, 3), 255, dtype=np.uint8))
    batch = openjepa.preprocess([pil, torch.zeros(3, 20, 20)], encoder)
    assert batch.shape == (2, 3, 16, 16)
    mean, std = torch.tensor(encoder.mean).view(3, 1, 1), torch.tensor(encoder.std).view(3, 1, 1)
    torch.testing.assert_close(batch[0], ((1 - mean) / std).expand(3, 16, 16))
    torch.testing.assert_close(batch[1], ((0 - mean) / std).expand(3, 16, 16))


def test_export_cli_refuses_bad_input_without_writing(checkpoint, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(checkpoint), "--format", "hf", "--out", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"
    assert main(["export", str(tmp_path / "nope.pt"), "--format", "hf", "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(tmp_path / "ok")]) == 0


def test_a_reference_file_with_a_non_square_grid_is_a_one_line_error(tmp_path, capsys):
    encoder = VisionTransformer((16, 24), 8, 3, embed_dim=192, depth=1, num_heads=3)
    torch.save({"encoder": encoder.state_dict(), "target_encoder": encoder.state_dict()}, tmp_path / "wide.pth.tar")
    assert main(["export", str(tmp_path / "wide.pth.tar"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a square grid" in err and not (tmp_path / "hf").exists()


def test_a_file_with_non_dict_entries_is_named_not_a_crash(tmp_path):
    torch.save({"encoder": [1, 2, 3]}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint openjepa knows"):
        openjepa.load_encoder(tmp_path / "odd.pt")


def test_a_run_trained_compiled_loads_eager(checkpoint, tmp_path):
    """meta.compile says how training ran; loading the model for use must not compile it."""
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["meta"]["compile"] = True
    torch.save(state, tmp_path / "compiled_run.pt")
    model, cfg = openjepa.load_ijepa(tmp_path / "compiled_run.pt")
    pred = openjepa.load_predictor(tmp_path / "compiled_run.pt")
    assert cfg.meta.compile  # the run's config is reported as it was
    blocks = [
        *model.encoder.blocks,
        *model.target_encoder.blocks,
        *model.predictor.predictor_blocks,
        *pred.predictor_blocks,
    ]
    assert all(b._compiled_call_impl is None for b in blocks)
