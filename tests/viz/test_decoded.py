import numpy as np
import torch
from PIL import Image, ImageDraw

from openjepa.decoder import Imagined
from openjepa.viz.decoded import OUTLINE, UNSEEN, decoded_figure, outline


def test_the_outline_is_the_border_of_the_hidden_patches():
    hidden = np.zeros((4, 4), dtype=bool)
    hidden[1:3, 1:3] = True  # one 2 x 2 block
    hidden[3, 3] = True  # and a patch in the corner
    canvas = Image.new("RGB", (16, 16), "white")
    outline(ImageDraw.Draw(canvas), hidden, (0, 0), 4)
    red = np.all(np.asarray(canvas) == OUTLINE, axis=-1)
    border = np.zeros((16, 16), dtype=bool)
    border[4, 4:12] = border[11, 4:12] = border[4:12, 4] = border[4:12, 11] = True
    border[12, 12:] = border[15, 12:] = border[12:, 12] = border[12:, 15] = True
    assert np.array_equal(red, border)


def test_the_figure_has_a_row_per_image_and_marks_what_the_context_did_not_see():
    images = torch.full((2, 1, 8, 8), 0.5)
    context = torch.tensor([[True, True, False, False], [False, True, True, True]])
    hidden = torch.tensor([[False, False, True, True], [True, False, False, False]])
    samples = {name: torch.rand(2, 3, 1, 8, 8) for name in ("target", "predicted", "control")}
    figure = np.asarray(decoded_figure(Imagined(images, context, hidden, samples, (2, 2), 4), scale=2))
    assert figure.shape == (28 + 2 * (16 + 2), 11 * (16 + 2) + 4 * 12, 3)
    context_tile = figure[28 : 28 + 16, 18 + 12 : 18 + 12 + 16]
    assert (context_tile[:8, :] == 128).all() and (context_tile[8:, :] == UNSEEN).all()  # row 0: top seen
