"""color/metrics.py (and the per-colour figure of reporting/colorization.py) on hand-made images whose values
are worked out by hand; CIEDE2000 against a second implementation checked on Sharma et al.'s published pairs."""
import math

import pytest
import torch

from color.metrics import ColourQuality, colourfulness, per_colour, plain, reference
from reporting.claims import rarest
from reporting.colorization import per_colour_figure


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


def grow(t, k=4):
    """Each pixel as a k x k block: means and population stds per image (colourfulness, errors, shares) are
    unchanged, and the images are large enough for SSIM's window (at least 6 x 6)."""
    return t.repeat_interleave(k, dim=-1).repeat_interleave(k, dim=-2)


def quality_of(target, rgb, palette=PALETTE):
    return ColourQuality(palette, reference(rgb, target, palette))


def test_colour_quality_confusion_matrix_accuracy_and_rgb_error_of_a_known_prediction():
    # One 2x2 image (grown to 8x8). target ids 0 0 / 1 2, prediction 0 1 / 1 0. True image = the target's colours.
    target = grow(torch.tensor([[[0, 0], [1, 2]]]))
    pred = grow(torch.tensor([[[0, 1], [1, 0]]]))
    rgb = PALETTE[target].permute(0, 3, 1, 2)
    q = quality_of(target, rgb)
    q.update(one_hot_logits(pred), target, rgb, full=True)
    got = plain(q.compute())
    assert got["images"] == 1 and got["confusion_matrix"] == [[16, 16, 0], [0, 16, 0], [16, 0, 0]]
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
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    rgb = PALETTE[target].permute(0, 3, 1, 2)
    q = quality_of(target, rgb)
    q.update(torch.zeros(1, 3, 8, 8), target, rgb, full=True)
    got = plain(q.compute())
    assert got["mae_rgb_annealed"] == pytest.approx(255 * 7 / 18, rel=1e-6)
    assert got["mae_rgb_argmax"] == 0.0  # equal logits: argmax picks the first colour, red: exact


def test_colourfulness_of_predictions_truth_and_their_ratio():
    # truth: the two-colour image (M = 272.6187); prediction: all grey (M = 0) -> ratio 0.
    # A second image, truth and prediction both pure red (M = 85.5296): means 178.574 and 42.765.
    target = grow(torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]]))
    pred = grow(torch.tensor([[[2, 2], [2, 2]], [[0, 0], [0, 0]]]))
    rgb = PALETTE[target].permute(0, 3, 1, 2)
    q = quality_of(target, rgb)
    q.update(one_hot_logits(pred, scale=0.5), target, rgb, full=True)  # soft logits: annealed differs from argmax
    got = plain(q.compute())
    assert got["colourfulness_true"] == pytest.approx((272.6187 + 85.5296) / 2, abs=1e-4)
    assert got["colourfulness_target"] == got["colourfulness_true"]  # the truth is in palette colours here
    assert got["colourfulness_pred"] == pytest.approx(85.5296 / 2, abs=1e-4)
    assert got["colourfulness_ratio"] == pytest.approx(85.5296 / (272.6187 + 85.5296), abs=1e-6)
    assert got["colourfulness_pred_annealed"] < got["colourfulness_pred"]  # a blend of red, blue and grey


# ----------------------------------------------------------------------------- PSNR, SSIM, CIEDE2000

def srgb_to_lab(rgb):
    """CIELAB (D65) of an sRGB colour in [0, 1], from the standard's formulas (a second implementation)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    m = [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    xyz = [sum(m[i][j] * linear[j] for j in range(3)) for i in range(3)]
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in
         (xyz[0] / 0.95047, xyz[1] / 1.0, xyz[2] / 1.08883)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def delta_e_2000(lab1, lab2):
    """CIEDE2000 of two Lab colours: Sharma, Wu and Dalal (2005), eq. 1-22, written out (a second implementation)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    c_bar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_bar ** 7 / (c_bar ** 7 + 25 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dl, dc = l2 - l1, c2p - c1p
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    d_h = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_bar = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_bar = (h1p + h2p) / 2
    else:
        h_bar = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(h_bar - 30)) + 0.24 * math.cos(math.radians(2 * h_bar))
         + 0.32 * math.cos(math.radians(3 * h_bar + 6)) - 0.20 * math.cos(math.radians(4 * h_bar - 63)))
    d_theta = 30 * math.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * math.sqrt(cp_bar ** 7 / (cp_bar ** 7 + 25 ** 7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / math.sqrt(20 + (l_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    r_t = -math.sin(math.radians(2 * d_theta)) * r_c
    return math.sqrt((dl / s_l) ** 2 + (dc / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (dc / s_c) * (d_h / s_h))


@pytest.mark.parametrize("lab1, lab2, expected", [  # Sharma et al. 2005, table 1: pairs 1, 7, 17, 25, 34
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082),
])
def test_the_second_ciede2000_reproduces_sharmas_published_pairs(lab1, lab2, expected):
    assert delta_e_2000(lab1, lab2) == pytest.approx(expected, abs=5e-5)


def test_the_second_lab_conversion_gives_the_published_lab_of_srgb_red():
    assert srgb_to_lab((1.0, 0.0, 0.0)) == pytest.approx((53.2406, 80.0923, 67.2028), abs=1e-3)


def uniform(colour, n=1, side=16):
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, side, side).clone()


def decoded_as(colour_index, target, scale=100.0, k=2):
    """Logits whose argmax and annealed decodings are both exactly palette colour `colour_index`."""
    return one_hot_logits(torch.full_like(target, colour_index), k, scale)


def test_identical_images_give_infinite_psnr_ssim_one_and_ciede2000_zero():
    palette = torch.tensor([[0.25, 0.5, 0.75], [0.9, 0.1, 0.3]])
    target = torch.ones(2, 16, 16, dtype=torch.long)
    rgb = uniform(palette[1].tolist(), n=2)
    rgb[1, :, :8] = palette[0].view(3, 1, 1)  # the second image holds both colours, and so does its target
    target[1, :8] = 0
    q = quality_of(target, rgb, palette)
    q.update(one_hot_logits(target, 2), target, rgb, full=True)
    got = plain(q.compute())
    for decoding in ("argmax", "annealed"):
        assert got[f"psnr_{decoding}"] == math.inf  # MSE 0 (the documented convention: +inf dB)
        assert got[f"ssim_{decoding}"] == pytest.approx(1.0, abs=3e-5)  # float32, as torchmetrics computes it
        assert got[f"ciede2000_{decoding}"] == 0.0
    assert got["mae_rgb_argmax"] == got["mae_rgb_annealed"] == 0.0 and got["accuracy"] == 1.0


def test_a_known_difference_between_two_uniform_images():
    """Truth uniform (0.7, 0.4, 0.2), both decodings uniform (0.8, 0.3, 0.1): every channel differs by 0.1,
    MSE 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB; SSIM of uniform images is the mean over the channels of
    (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = 0.01^2 (no variance, so the other terms are 1);
    CIEDE2000 from the second implementations above."""
    truth, pred = (0.7, 0.4, 0.2), (0.8, 0.3, 0.1)
    palette = torch.tensor([pred, (0.0, 0.0, 1.0)])
    target = torch.ones(3, 16, 16, dtype=torch.long)  # only the confusion matrix reads it
    rgb = uniform(truth, n=3)
    q = quality_of(target, rgb, palette)
    q.update(decoded_as(0, target), target, rgb, full=True)
    got = plain(q.compute())
    c1 = 0.01 ** 2
    ssim = sum((2 * x * y + c1) / (x * x + y * y + c1) for x, y in zip(pred, truth)) / 3
    delta = delta_e_2000(srgb_to_lab(pred), srgb_to_lab(truth))
    # Lab (49.680, 48.417, 52.883) and (51.000, 26.470, 41.160): a clearly visible difference
    assert [round(v, 3) for v in srgb_to_lab(pred) + srgb_to_lab(truth)] == [49.68, 48.417, 52.883, 51.0, 26.47, 41.16]
    assert delta == pytest.approx(8.9288, abs=1e-4)
    for decoding in ("argmax", "annealed"):
        assert got[f"psnr_{decoding}"] == pytest.approx(20.0, abs=1e-4)
        assert got[f"ssim_{decoding}"] == pytest.approx(ssim, abs=3e-4)  # float32: its variances lose ~1e-4
        assert got[f"ciede2000_{decoding}"] == pytest.approx(delta, rel=1e-4)
    assert got["mae_rgb_argmax"] == pytest.approx(25.5, rel=1e-5)  # 0.1 of 255 on every value


def test_grey_pair_ciede2000_by_the_lightness_term_alone():
    """Greys 0.5 and 0.25: L* 53.39 and 26.98 (a* and b* within 0.003 of 0), so CIEDE2000 is about
    |dL| / S_L, S_L = 1 + 0.015 (L_bar - 50)^2 / sqrt(20 + (L_bar - 50)^2)."""
    palette = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    rgb = uniform((0.25, 0.25, 0.25))
    q = quality_of(target, rgb, palette)
    q.update(decoded_as(0, target), target, rgb, full=True)
    got = plain(q.compute())
    l1 = 116 * (((0.5 + 0.055) / 1.055) ** 2.4) ** (1 / 3) - 16
    l2 = 116 * (((0.25 + 0.055) / 1.055) ** 2.4) ** (1 / 3) - 16
    l_bar = (l1 + l2) / 2
    by_hand = abs(l1 - l2) / (1 + 0.015 * (l_bar - 50) ** 2 / math.sqrt(20 + (l_bar - 50) ** 2))
    assert (round(l1, 2), round(l2, 2), round(by_hand, 2)) == (53.39, 26.98, 23.29)
    assert got["ciede2000_argmax"] == pytest.approx(by_hand, abs=0.01)
    assert got["psnr_argmax"] == pytest.approx(10 * math.log10(1 / 0.0625), abs=1e-4)  # MSE 0.25^2


# ----------------------------------------------------------------------------- accumulation, DDP, per-epoch

KEYS = ["colourfulness_pred", "colourfulness_pred_annealed", "mae_rgb_argmax", "mae_rgb_annealed", "accuracy",
        "mean_recall", "psnr_argmax", "psnr_annealed", "ssim_argmax", "ssim_annealed", "ciede2000_argmax",
        "ciede2000_annealed"]


def _random_batch(n=6, side=12):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 3, side, side, generator=generator) * 2
    target = torch.randint(0, 3, (n, side, side), generator=generator)
    return logits, target, torch.rand(n, 3, side, side, generator=generator)


def _same(a, b):
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["images"] == b["images"]
    for key in KEYS:
        # float32 rounds by batch: SSIM's convolutions, and a batch's argmax RGB error sum (cascade-summed,
        # ~1e-7 relative); everything else is float64 or exact counts
        rel = 1e-6 if key.startswith(("ssim", "mae_rgb_argmax")) else 1e-9
        assert a[key] is not None and a[key] == pytest.approx(b[key], rel=rel), key


def test_accumulating_in_several_batches_equals_one_batch():
    logits, target, rgb = _random_batch()
    whole, parts = quality_of(target, rgb), quality_of(target, rgb)
    whole.update(logits, target, rgb, full=True)
    for part in ((0, 1), (1, 4), (4, 6)):
        s = slice(*part)
        parts.update(logits[s], target[s], rgb[s], full=True)
    a, b = plain(whole.compute()), plain(parts.compute())
    assert a["images"] == 6
    _same(a, b)


def test_channels_last_rgb_gives_the_same_values_as_nchw():
    """data/cifar.py stores the validation RGB channels-last; every value must be what NCHW gives."""
    logits, target, rgb = _random_batch()
    nchw, last = quality_of(target, rgb), quality_of(target, rgb)
    nchw.update(logits, target, rgb, full=True)
    last.update(logits, target, rgb.contiguous(memory_format=torch.channels_last), full=True)
    _same(plain(nchw.compute()), plain(last.compute()))


def test_two_processes_states_reduced_as_ddp_does_equal_one_metric_over_all_images():
    """Rank 0's metric computed as under DDP: torchmetrics syncs it before `compute` through the gather it is
    given, here one that hands it rank 1's states too (what all_gather returns); its reductions then give
    the metric of all images."""
    logits, target, rgb = _random_batch()
    everything = quality_of(target, rgb)  # the reference is of all images, on every process
    everything.update(logits, target, rgb, full=True)
    rank1 = quality_of(target, rgb)
    rank1.update(logits[4:], target[4:], rgb[4:], full=True)
    # keyed by the shape of rank 0's state; a list state is gathered as one tensor, its items concatenated
    other = {tuple(t.shape): t for t in (rank1.confusion, rank1.sums, rank1.full_counts)}
    other[(4, len(PALETTE))] = torch.cat(rank1.colour_counts)  # rank 0 has 4 images, rank 1 two
    assert len(other) == 4  # the four states tell apart by shape
    gathered = []

    def all_gather(tensor, group=None):
        gathered.append(tuple(tensor.shape))
        return [tensor, other[tuple(tensor.shape)]]

    rank0 = ColourQuality(PALETTE, reference(rgb, target, PALETTE), dist_sync_fn=all_gather,
                          distributed_available_fn=lambda: True)
    rank0.update(logits[:4], target[:4], rgb[:4], full=True)
    got = plain(rank0.compute())
    assert sorted(gathered) == sorted(other)  # every state was gathered, once
    _same(got, plain(everything.compute()))


def test_per_epoch_update_leaves_the_annealed_and_paper_metrics_none():
    logits, target, rgb = _random_batch()
    epoch = quality_of(target, rgb)
    epoch.update(logits, target, rgb)  # full=False: what every validation epoch but the last does
    got = plain(epoch.compute())
    for key in ("colourfulness_pred_annealed", "mae_rgb_annealed", "psnr_argmax", "psnr_annealed", "ssim_argmax",
                "ssim_annealed", "ciede2000_argmax", "ciede2000_annealed"):
        assert got[key] is None, key
    full = quality_of(target, rgb)
    full.update(logits, target, rgb, full=True)
    want = plain(full.compute())
    for key in ("colourfulness_pred", "mae_rgb_argmax", "accuracy", "mean_recall", "colourfulness_ratio"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key  # the argmax metrics are there, the same


def test_paper_metrics_average_over_the_full_updates_only():
    """A per-epoch batch then a full one (not what training does, but the counts must not mix): PSNR, SSIM
    and CIEDE2000 are means over the images and pixels of the full updates alone."""
    logits, target, rgb = _random_batch()
    mixed, only = quality_of(target, rgb), quality_of(target, rgb)
    mixed.update(logits[:2], target[:2], rgb[:2])
    mixed.update(logits[2:], target[2:], rgb[2:], full=True)
    only.update(logits[2:], target[2:], rgb[2:], full=True)
    a, b = plain(mixed.compute()), plain(only.compute())
    for key in ("psnr_argmax", "psnr_annealed", "ssim_argmax", "ssim_annealed", "ciede2000_argmax",
                "ciede2000_annealed", "mae_rgb_annealed", "colourfulness_pred_annealed"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert a["images"] == 6 and a["mae_rgb_argmax"] != pytest.approx(b["mae_rgb_argmax"])  # argmax: all 6


def test_reference_sums_the_truths_colourfulness():
    target = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
    rgb = torch.cat([image([(255, 0, 0), (0, 0, 255), (0, 0, 255), (255, 0, 0)]), image([(90, 90, 90)] * 4)])
    ref = reference(rgb, target, PALETTE)
    assert ref["images"] == 2
    assert ref["cf_true"] == pytest.approx(272.6187, abs=1e-4)  # the two-colour image plus a grey one
    assert ref["cf_target"] == pytest.approx(272.6187 + 85.5296, abs=1e-4)  # in palette colours: the second is red


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
