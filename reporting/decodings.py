"""Argmax vs annealed-mean decoding of a trained colorization model on the validation images.

For each decoding: pixel accuracy (the decoded colour's nearest palette colour equals the target
class; for argmax this is the usual accuracy) and the mean absolute RGB error against the true
image, in 0..255 units, over all validation pixels and channels.
"""
import torch

from color.palette import DEFAULT_TEMPERATURE, annealed_probabilities, nearest_colour, palette_to_rgb

DECODINGS = ("argmax", "annealed")  # color/palette.py says what each is


def decode(logits, palette, method="argmax", temperature=DEFAULT_TEMPERATURE):
    """(N, K, H, W) logits -> (N, 3, H, W) RGB in [0, 1] with the palette's (K, 3) colours."""
    palette = palette.to(logits.device, torch.float32)
    if method == "argmax":
        return palette_to_rgb(logits.argmax(dim=1), palette)
    if method == "annealed":
        return torch.einsum("nkhw,kc->nchw", annealed_probabilities(logits, temperature), palette)
    raise ValueError(f"unknown decoding {method!r}; choose one of {', '.join(DECODINGS)}")


@torch.no_grad()
def decoding_metrics(model, grey, target, rgb, palette, temperature, batch_size=250):
    """{method: {"accuracy": float in [0, 1], "mae_rgb": float in 0..255}} over all the images.

    model: (N, 1, H, W) grey -> (N, K, H, W) logits (in eval mode); target (N, H, W) palette ids;
    rgb (N, 3, H, W) true colours in [0, 1]; palette (K, 3).
    """
    correct = {m: 0 for m in DECODINGS}
    abs_err = {m: 0.0 for m in DECODINGS}
    for start in range(0, len(grey), batch_size):
        logits = model(grey[start:start + batch_size])
        truth = rgb[start:start + batch_size]
        labels = target[start:start + batch_size]
        for method in DECODINGS:
            colour = decode(logits, palette, method, temperature)
            classes = logits.argmax(dim=1) if method == "argmax" else nearest_colour(colour, palette)
            correct[method] += int((classes == labels).sum())
            abs_err[method] += float((colour - truth).abs().double().sum())
    pixels = target.numel()
    return {m: {"accuracy": correct[m] / pixels, "mae_rgb": 255.0 * abs_err[m] / (3 * pixels)} for m in DECODINGS}


@torch.no_grad()
def decoding_rows(model, grey, rgb, palette, temperature):
    """(label, images) rows for a figure: grey input | argmax | annealed mean | true image."""
    logits = model(grey)
    return [("greyscale input", grey), ("argmax", decode(logits, palette, "argmax")),
            (f"annealed mean\nT = {temperature:g}", decode(logits, palette, "annealed", temperature)),
            ("true image", rgb)]
