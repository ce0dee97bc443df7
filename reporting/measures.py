"""Measurements the report makes with trained colourisation nets beyond what their runs recorded.

- `edge_masks`: edge and flat pixels of the grey inputs (Sobel gradient magnitude), the same masks for
  every model compared;
- `region_errors`: a net's mean absolute RGB error (argmax decoding, 0..255 units) on those pixels.

The nets come in as arguments ((N, 1, H, W) grey -> (N, K, H, W) logits, in eval mode): this package
never imports the task scripts.
"""
import torch

from reporting.decodings import decode

EDGE_SHARE = 0.2  # the 20 % of validation pixels with the strongest grey gradient are "edge"
FLAT_SHARE = 0.5  # the 50 % with the weakest are "flat"

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(grey):
    """(N, 1, H, W) grey in [0, 1] -> (N, H, W) Sobel gradient magnitude (edge pixels replicated at the border)."""
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.t()]).unsqueeze(1).to(grey)
    padded = torch.nn.functional.pad(grey.float(), (1, 1, 1, 1), mode="replicate")
    g = torch.nn.functional.conv2d(padded, kernels)
    return g.pow(2).sum(dim=1).sqrt()


def edge_masks(grey, edge_share=EDGE_SHARE, flat_share=FLAT_SHARE):
    """{"edge", "flat": (N, H, W) bool masks, "edge_threshold", "flat_threshold"} from the grey inputs: edge
    pixels have a Sobel magnitude of at least the (1 - edge_share) quantile, flat ones at most the
    flat_share quantile."""
    magnitude = sobel_magnitude(grey)
    flat_values = magnitude.flatten().double()
    high = float(torch.quantile(flat_values, 1 - edge_share))
    low = float(torch.quantile(flat_values, flat_share))
    return {"edge": magnitude >= high, "flat": magnitude <= low, "edge_threshold": high, "flat_threshold": low,
            "edge_share": edge_share, "flat_share": flat_share}


@torch.no_grad()
def region_errors(model, grey, rgb, palette, masks, batch_size=250):
    """{"edge", "flat", "all": mean absolute RGB error (0..255, over the region's pixels and channels)} of the
    argmax-decoded predictions of `model` on (grey, rgb)."""
    sums = {"edge": 0.0, "flat": 0.0, "all": 0.0}
    palette = torch.as_tensor(palette, dtype=torch.float32)
    for start in range(0, len(grey), batch_size):
        end = start + batch_size
        colour = decode(model(grey[start:end]), palette, "argmax")
        error = (colour - rgb[start:end]).abs().sum(dim=1).double()  # (n, H, W): summed over channels
        sums["all"] += float(error.sum())
        for region in ("edge", "flat"):
            sums[region] += float(error[masks[region][start:end]].sum())
    counts = {"edge": int(masks["edge"].sum()), "flat": int(masks["flat"].sum()), "all": rgb[:, 0].numel()}
    return {region: 255.0 * sums[region] / (3 * counts[region]) for region in sums}
