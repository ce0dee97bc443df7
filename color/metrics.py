"""Colour-quality metrics of a colourisation: how colourful, which colours, how far from the truth.

`ColourQuality` is a torchmetrics Metric fed the logits the validation step has already computed (no second
forward pass); its states are sums, added over DDP processes, so they equal a single-process evaluation.

- Colourfulness: Hasler and Suesstrunk (SPIE 2003), per image on 0..255 RGB; a grey image has 0. Ratio =
  mean over the argmax predictions / mean over the true images.
- Per palette colour, from the confusion matrix (rows: target, columns: argmax): target and prediction
  share, recall (None when the colour is never the target). Mean absolute RGB error (0..255 units).
- The annealed mean needs a softmax over all logits (a quarter of a forward pass here), so it and the
  metrics colourisation papers report are computed with `full=True` only (the last validation epoch):
  PSNR and SSIM (torchmetrics) and CIEDE2000 (Sharma et al. 2005, scikit-image, D65), averaged over the
  images (CIEDE2000: the pixels). An exactly decoded image has PSNR +inf, and so has the mean: not capped.
"""
import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import deltaE_ciede2000, rgb2lab
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from color.palette import DEFAULT_TEMPERATURE, annealed_probabilities, palette_to_rgb

DECODED = ("argmax", "annealed")
PAPER = ("psnr", "ssim", "ciede2000")


def colourfulness(rgb):
    """sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2) of each (N, 3, H, W) image in [0, 1]."""
    x = rgb.detach().double() * 255.0
    r, g, b = x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return spread + 0.3 * centre


def colour_moments(palette):
    """(Q, 4) float64: rg, yb, rg^2, yb^2 of each palette colour on 0..255, what `palette_colourfulness` weighs."""
    c = torch.as_tensor(palette, dtype=torch.float64) * 255.0
    rg, yb = c[:, 0] - c[:, 1], 0.5 * (c[:, 0] + c[:, 1]) - c[:, 2]
    return torch.stack([rg, yb, rg ** 2, yb ** 2], 1)


def palette_colourfulness(counts, moments):
    """`colourfulness` of images made of palette colours, from their colour counts (N, Q) -> (N,) float64:
    the means and variances of rg and yb are count-weighted sums of the `colour_moments` of the Q colours."""
    w = counts.double()
    m = (w @ moments.to(w.device)) / w.sum(dim=1, keepdim=True)
    means = m[:, :2]
    spread = (m[:, 2:] - means ** 2).clamp(min=0).sum(dim=1).sqrt()
    return spread + 0.3 * means.pow(2).sum(dim=1).sqrt()


def ciede2000(rgb, truth):
    """Per-pixel CIEDE2000 difference of two (N, 3, H, W) RGB images in [0, 1] -> (N, H, W) float64."""
    lab = [rgb2lab(np.clip(t.detach().cpu().double().permute(0, 2, 3, 1).numpy(), 0, 1)) for t in (rgb, truth)]
    return torch.from_numpy(deltaE_ciede2000(*lab))


def per_colour(confusion):
    """{"target_share", "pred_share", "recall"} lists (one entry per colour) from a (Q, Q) confusion matrix
    (a tensor or nested lists).
    In Python numbers: each torch call lets another thread take the GIL (TensorBoard's writer at epoch end),
    and a few such calls cost up to 20 ms where these 24 x 24 sums cost 0.1 ms."""
    c = confusion.tolist() if isinstance(confusion, torch.Tensor) else confusion
    rows, cols = [sum(r) for r in c], [sum(k) for k in zip(*c)]
    total = sum(rows)
    return {"target_share": [r / total for r in rows], "pred_share": [k / total for k in cols],
            "recall": [c[q][q] / rows[q] if rows[q] > 0 else None for q in range(len(c))]}


def reference(rgb, target, palette):
    """{"images", "cf_true", "cf_target"}: colourfulness sums of the true images and of them in palette colours,
    what `ColourQuality` divides by: computed once, as they do not change between epochs."""
    return {"images": len(rgb), "cf_true": float(colourfulness(rgb).sum()),
            "cf_target": float(colourfulness(palette_to_rgb(target, palette)).sum())}


class ColourQuality(Metric):
    """The colour-quality metrics over batches; `reference`: of all the images it will see, on every process."""

    full_state_update = False

    def __init__(self, palette, reference, temperature=DEFAULT_TEMPERATURE, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("palette", torch.as_tensor(palette, dtype=torch.float32), persistent=False)
        self.register_buffer("moments", colour_moments(palette), persistent=False)
        self.reference, self.temperature = dict(reference), temperature
        q = len(self.palette)
        self.add_state("confusion", torch.zeros(q, q, dtype=torch.long), dist_reduce_fx="sum")
        # each image's count of every palette colour under the argmax (an (N, Q) tensor per update): the argmax
        # images' colourfulness follows from it, computed once per epoch in compute
        self.add_state("colour_counts", [], dist_reduce_fx="cat")
        # per decoding: colourfulness (annealed only), absolute RGB error, PSNR, SSIM, CIEDE2000 (full only)
        self.add_state("sums", torch.zeros(2 + len(PAPER), len(DECODED), dtype=torch.float64), dist_reduce_fx="sum")
        # images and RGB values that the full updates saw (the argmax counts follow from the confusion matrix)
        self.add_state("full_counts", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits, target, rgb, pred=None, full=False):
        """logits (N, Q, H, W), target palette ids (N, H, W), true rgb (N, 3, H, W) in [0, 1]; `pred` the
        argmax of the logits when the caller has it already."""
        q, n = len(self.palette), len(target)
        pred = logits.detach().max(dim=1).indices if pred is None else pred  # = argmax(dim=1), 3x faster on CPU
        # One bincount over (image, target, prediction): the confusion matrix, and each image's colour counts.
        # code = (image * q + target) * q + pred, in two passes over the pixels (add's alpha fuses the multiply)
        offsets = torch.arange(0, n * q * q, q * q, device=pred.device).view(n, 1, 1)
        code = torch.add(pred, target, alpha=q).add_(offsets)
        joint = torch.bincount(code.view(-1), minlength=n * q * q).view(n, q, q)
        self.confusion += joint.sum(0)
        self.colour_counts.append(joint.sum(1))
        hwc = rgb.float().permute(0, 2, 3, 1)
        argmax = F.embedding(pred, self.palette)  # (N, H, W, 3): a gather, 3x faster than indexing here
        # A batch's error sum in float32 (torch sums in cascades: relative error ~1e-7), 10x faster than a
        # float64 reduction on a CPU; the epoch's sum of batches is float64.
        self.sums[1, 0] += (argmax - hwc).abs_().sum()
        if not full:
            return
        probabilities = annealed_probabilities(logits.detach(), self.temperature)
        annealed = torch.einsum("nkhw,kc->nhwc", probabilities, self.palette)
        self.sums[:2, 1] += torch.stack([colourfulness(annealed.permute(0, 3, 1, 2)).sum(),
                                         (annealed - hwc).abs().sum(dtype=torch.float64)])
        self.full_counts += torch.tensor([n, rgb.numel()], device=self.full_counts.device)
        truth = rgb.float()
        for j, x in enumerate((argmax, annealed)):
            x = x.permute(0, 3, 1, 2).clamp(0, 1)
            self.sums[2, j] += peak_signal_noise_ratio(x.double(), truth.double(), data_range=1.0, reduction="none",
                                                       dim=(1, 2, 3)).sum()
            # float32, as torchmetrics computes it: within 3e-4 of float64 (identical images: 1 - 2e-5), 16x faster
            self.sums[3, j] += structural_similarity_index_measure(x, truth, data_range=1.0, reduction="none").sum()
            self.sums[4, j] += ciede2000(x, truth).sum().to(self.sums)

    def compute(self):
        # as Python numbers at once: indexing tensors element by element cost more than the rest of compute
        sums, (full_images, full_values), table = self.sums.tolist(), self.full_counts.tolist(), self.confusion.tolist()
        counts = dim_zero_cat(self.colour_counts) if len(self.colour_counts) else None
        if counts is not None:
            sums[0][0] = palette_colourfulness(counts, self.moments).sum().item()
        pixels = sum(map(sum, table))
        images, values = [0 if counts is None else len(counts), full_images], [3 * pixels, full_values]
        ref = self.reference
        true = ref["cf_true"] / ref["images"]

        def mean(row, j, count):
            return sums[row][j] / count[j] if count[j] else None

        argmax = mean(0, 0, images)
        colours = per_colour(table)
        recalls = [r for r in colours["recall"] if r is not None]
        out = {
            "images": images[0],
            "colourfulness_pred": argmax,  # argmax decoding
            "colourfulness_pred_annealed": mean(0, 1, images),
            "colourfulness_true": true,  # the real RGB images
            "colourfulness_target": ref["cf_target"] / ref["images"],  # the true images in palette colours
            "colourfulness_ratio": argmax / true if argmax is not None and true > 0 else None,
            "mae_rgb_argmax": 255.0 * mean(1, 0, values) if values[0] else None,
            "mae_rgb_annealed": 255.0 * mean(1, 1, values) if values[1] else None,
            "accuracy": sum(table[q][q] for q in range(len(table))) / pixels if pixels else None,
            "mean_recall": sum(recalls) / len(recalls) if recalls else None,
            "temperature": self.temperature,
        }
        # full updates only: the annealed column counts exactly those (it is decoded in no other)
        full = {"images": [images[1]] * 2, "pixels": [values[1] // 3] * 2}
        for i, metric in enumerate(PAPER):
            for j, name in enumerate(DECODED):
                out[f"{metric}_{name}"] = mean(2 + i, j, full["pixels" if metric == "ciede2000" else "images"])
        # the two big entries stay tensors: torchmetrics walks every element of what compute returns
        # (a 24 x 24 nested list cost 10 ms per epoch); `plain` turns them into lists
        return {**out, "palette": self.palette.clone(), **colours, "confusion_matrix": self.confusion.cpu()}


def plain(quality):
    """`ColourQuality.compute()`'s dict with only JSON values (its tensors as nested lists)."""
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in quality.items()}
