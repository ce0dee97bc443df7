"""Colour-quality metrics of a colourisation: how colourful, which colours, how far from the truth.

- Colourfulness: Hasler and Suesstrunk, "Measuring colourfulness in natural images" (SPIE 2003), on
  RGB in 0..255 units, per image:  rg = R - G,  yb = (R + G) / 2 - B,
  M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)  (population std over the
  image's pixels). A grey image has M = 0. Reported as the mean of M over the images, and
  ratio = mean M of the predictions / mean M of the true images.
- Per palette colour q, from the confusion matrix C (rows: target, columns: prediction; torchmetrics
  MulticlassConfusionMatrix): target share = row sum / pixels, prediction share = column sum / pixels,
  recall = C[q, q] / row sum (None when q is never the target).
- Mean absolute RGB error (0..255 units, over pixels and channels) of the decoded image against the
  true image, for argmax and for the annealed mean (color/decode.py).
"""
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from color.decode import DEFAULT_TEMPERATURE, annealed_probabilities
from color.palette import palette_to_rgb


def colourfulness(rgb):
    """Hasler-Suesstrunk colourfulness of each image of (N, 3, H, W) RGB in [0, 1] -> (N,) float64."""
    x = rgb.detach().double() * 255.0
    r, g, b = x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return spread + 0.3 * centre


def per_colour(confusion):
    """{"target_share", "pred_share", "recall"} lists (one entry per colour) from a (Q, Q) confusion matrix."""
    c = confusion.double()
    total = c.sum()
    rows, cols = c.sum(dim=1), c.sum(dim=0)
    recall = [float(c[q, q] / rows[q]) if rows[q] > 0 else None for q in range(len(c))]
    return {"target_share": (rows / total).tolist(), "pred_share": (cols / total).tolist(), "recall": recall}


class ColourQuality:
    """Accumulates the colour-quality metrics over batches; `compute()` returns a JSON-ready dict."""

    def __init__(self, palette, temperature=DEFAULT_TEMPERATURE):
        self.palette = torch.as_tensor(palette, dtype=torch.float32)
        self.temperature = temperature
        # sync_on_compute=False: one process sees all the images it is given; never a DDP collective
        self.confusion = MulticlassConfusionMatrix(len(self.palette), validate_args=False, sync_on_compute=False)
        self.sums = {k: 0.0 for k in ("cf_pred", "cf_annealed", "cf_true", "cf_target", "ae_argmax", "ae_annealed")}
        self.images = self.values = 0

    @torch.no_grad()
    def update(self, logits, target, rgb):
        """logits (N, Q, H, W), target palette ids (N, H, W), true rgb (N, 3, H, W) in [0, 1]."""
        logits, target, rgb = logits.detach().float().cpu(), target.cpu(), rgb.float().cpu()
        pred = logits.argmax(dim=1)
        self.confusion.update(pred, target)
        argmax_rgb = palette_to_rgb(pred, self.palette)
        annealed_rgb = torch.einsum("nkhw,kc->nchw", annealed_probabilities(logits, self.temperature), self.palette)
        self.sums["cf_pred"] += float(colourfulness(argmax_rgb).sum())
        self.sums["cf_annealed"] += float(colourfulness(annealed_rgb).sum())
        self.sums["cf_true"] += float(colourfulness(rgb).sum())
        self.sums["cf_target"] += float(colourfulness(palette_to_rgb(target, self.palette)).sum())
        self.sums["ae_argmax"] += float((argmax_rgb - rgb).abs().double().sum())
        self.sums["ae_annealed"] += float((annealed_rgb - rgb).abs().double().sum())
        self.images += len(target)
        self.values += rgb.numel()

    def compute(self):
        s, n = self.sums, self.images
        confusion = self.confusion.compute()
        colours = per_colour(confusion)
        true = s["cf_true"] / n
        recalls = [r for r in colours["recall"] if r is not None]
        return {
            "images": n,
            "colourfulness_pred": s["cf_pred"] / n,             # argmax decoding
            "colourfulness_pred_annealed": s["cf_annealed"] / n,
            "colourfulness_true": true,                         # the real RGB images
            "colourfulness_target": s["cf_target"] / n,         # the true images in palette colours
            "colourfulness_ratio": (s["cf_pred"] / n) / true if true > 0 else None,
            "mae_rgb_argmax": 255.0 * s["ae_argmax"] / self.values,
            "mae_rgb_annealed": 255.0 * s["ae_annealed"] / self.values,
            "accuracy": float(confusion.diag().sum() / confusion.sum()),
            "mean_recall": sum(recalls) / len(recalls) if recalls else None,
            "temperature": self.temperature,
            "palette": self.palette.tolist(),
            **colours,
            "confusion_matrix": confusion.long().tolist(),
        }


@torch.no_grad()
def colour_quality(model, grey, target, rgb, palette, temperature=DEFAULT_TEMPERATURE, batch_size=250):
    """ColourQuality.compute() of `model` ((N, 1, H, W) grey -> logits; in eval mode) over all the images."""
    quality = ColourQuality(palette, temperature)
    device = next(model.parameters()).device
    for start in range(0, len(grey), batch_size):
        end = start + batch_size
        quality.update(model(grey[start:end].to(device)), target[start:end], rgb[start:end])
    return quality.compute()


def rarest(quality, k=3):
    """Indices of the k colours with the smallest (non-zero) target share, rarest first."""
    shares = quality["target_share"]
    present = [q for q in range(len(shares)) if shares[q] > 0]
    return sorted(present, key=lambda q: shares[q])[:k]
