"""color/metrics.py and color/figures.py on hand-made images whose values are worked out by hand."""
import math

import pytest
import torch

from color.figures import per_colour_figure
from color.metrics import ColourQuality, colourfulness, per_colour, rarest


def image(pixels, h=2, w=2):
    """(1, 3, h, w) image in [0, 1] from a list of h*w (R, G, B) tuples in 0..255, row by row."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 3, h, w) / 255.0


def test_grey_images_have_colourfulness_zero():
    # R = G = B everywhere: rg = 0 and yb = 0 at every pixel, whatever the grey levels.
    grey = image([(0, 0, 0), (40, 40, 40), (200, 200, 200), (255, 255, 255)])
    assert colourfulness(grey).tolist() == [0.0]


def test_single_colour_image_is_0_3_times_its_mean_opponent_vector():
    # Pure red (255, 0, 0) everywhere: rg = 255, yb = 127.5 at every pixel, so both stds are 0 and
    # M = 0.3 * sqrt(255^2 + 127.5^2) = 0.3 * 285.0987... = 85.5296...
    red = image([(255, 0, 0)] * 4)
    assert colourfulness(red).item() == pytest.approx(0.3 * math.sqrt(255 ** 2 + 127.5 ** 2), rel=1e-12)
    assert colourfulness(red).item() == pytest.approx(85.5296, abs=1e-4)


def test_two_colour_image_matches_the_formula_worked_by_hand():
    # Two red (255, 0, 0) and two blue (0, 0, 255) pixels:
    #   rg: 255, 255, 0, 0        -> mean 127.5, population std 127.5
    #   yb: 127.5, 127.5, -255, -255 -> mean -63.75, population std 191.25
    #   M = sqrt(127.5^2 + 191.25^2) + 0.3 sqrt(127.5^2 + 63.75^2) = 229.8539 + 0.3 * 142.5494 = 272.6187
    two = image([(255, 0, 0), (0, 0, 255), (0, 0, 255), (255, 0, 0)])
    assert colourfulness(two).item() == pytest.approx(272.6187, abs=1e-4)


def test_colourfulness_is_per_image():
    batch = torch.cat([image([(255, 0, 0)] * 4), image([(90, 90, 90)] * 4)])
    assert colourfulness(batch).tolist() == pytest.approx([85.5296, 0.0], abs=1e-4)


def test_per_colour_shares_and_recall_of_a_known_confusion_matrix():
    # rows = target, columns = prediction
    c = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    got = per_colour(c)
    assert got["target_share"] == pytest.approx([0.5, 0.25, 0.25])
    assert got["pred_share"] == pytest.approx([0.5, 0.5, 0.0])
    assert got["recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert per_colour(torch.tensor([[2, 0], [0, 0]]))["recall"] == [1.0, None]  # never a target: no recall


PALETTE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])


def one_hot_logits(pred, k=3, scale=100.0):
    return scale * torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()


def test_colour_quality_confusion_matrix_accuracy_and_rgb_error_of_a_known_prediction():
    # One 2x2 image. target ids 0 0 / 1 2, prediction 0 1 / 1 0. True image = the target's colours.
    target = torch.tensor([[[0, 0], [1, 2]]])
    pred = torch.tensor([[[0, 1], [1, 0]]])
    rgb = PALETTE[target].permute(0, 3, 1, 2)
    q = ColourQuality(PALETTE)
    q.update(one_hot_logits(pred), target, rgb)
    got = q.compute()
    assert got["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert got["accuracy"] == 0.5
    assert got["recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert got["mean_recall"] == pytest.approx(0.5)
    # argmax errors, per pixel |pred - true| summed over RGB: 0, red vs blue = 2, 0, grey vs red = 0.5+0.5+0.5
    # -> mean over 4 pixels x 3 channels = 3.5 / 12, in 0..255 units
    assert got["mae_rgb_argmax"] == pytest.approx(255 * 3.5 / 12, rel=1e-6)
    # logits of 100 are one-hot after the annealed softmax too (exp(-100/0.38) is 0 in float32)
    assert got["mae_rgb_annealed"] == pytest.approx(255 * 3.5 / 12, rel=1e-5)
    assert [r for r in rarest(got, 2)] == [1, 2]


def test_annealed_mean_of_equal_logits_is_the_palette_mean():
    # Equal logits: softmax(logits / T) is uniform, so every pixel decodes to the palette's mean
    # (0.5, 1/6, 0.5). Truth = pure red: |0.5 - 1| + |1/6 - 0| + |0.5 - 0| = 7/6 per pixel, / 3 channels.
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    rgb = PALETTE[target].permute(0, 3, 1, 2)
    q = ColourQuality(PALETTE)
    q.update(torch.zeros(1, 3, 2, 2), target, rgb)
    got = q.compute()
    assert got["mae_rgb_annealed"] == pytest.approx(255 * 7 / 18, rel=1e-6)
    assert got["mae_rgb_argmax"] == 0.0  # equal logits: argmax picks the first colour, red: exact


def test_colourfulness_of_predictions_truth_and_their_ratio():
    # truth: the two-colour image (M = 272.6187); prediction: all grey (M = 0) -> ratio 0.
    # A second image, truth and prediction both pure red (M = 85.5296): means 178.574 and 42.765.
    target = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
    pred = torch.tensor([[[2, 2], [2, 2]], [[0, 0], [0, 0]]])
    rgb = PALETTE[target].permute(0, 3, 1, 2)
    q = ColourQuality(PALETTE)
    q.update(one_hot_logits(pred, scale=0.5), target, rgb)  # soft logits: the annealed mean differs from argmax
    got = q.compute()
    assert got["colourfulness_true"] == pytest.approx((272.6187 + 85.5296) / 2, abs=1e-4)
    assert got["colourfulness_pred"] == pytest.approx(85.5296 / 2, abs=1e-4)
    assert got["colourfulness_ratio"] == pytest.approx(85.5296 / (272.6187 + 85.5296), abs=1e-6)
    assert got["colourfulness_pred_annealed"] < got["colourfulness_pred"]  # a blend of red, blue and grey


def test_accumulating_two_batches_equals_one_batch():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 4, 4), torch.randint(0, 3, (4, 4, 4))
    rgb = torch.rand(4, 3, 4, 4)
    whole, halves = ColourQuality(PALETTE), ColourQuality(PALETTE)
    whole.update(logits, target, rgb)
    halves.update(logits[:1], target[:1], rgb[:1])
    halves.update(logits[1:], target[1:], rgb[1:])
    a, b = whole.compute(), halves.compute()
    assert a["confusion_matrix"] == b["confusion_matrix"]
    for key in ("colourfulness_pred", "colourfulness_true", "mae_rgb_argmax", "mae_rgb_annealed"):
        assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_per_colour_figure_labels_bars_with_the_palette_swatches_commonest_first():
    import matplotlib.pyplot as plt

    quality = {"palette": PALETTE.tolist(), "target_share": [0.2, 0.5, 0.3], "pred_share": [0.1, 0.6, 0.3],
               "recall": [0.1, 0.9, 0.5]}
    fig = per_colour_figure(quality, "test")
    top = fig.axes[0]
    swatches = [tuple(p.get_facecolor()[:3]) for p in top.patches if p.get_clip_on() is False]
    assert swatches == [(0.0, 0.0, 1.0), (0.5, 0.5, 0.5), (1.0, 0.0, 0.0)]  # colours 1, 2, 0
    assert [t.get_text() for t in top.get_xticklabels()] == ["1", "2", "0"]
    plt.close(fig)
