"""Class rebalancing of the colour loss: Zhang, Isola and Efros, "Colorful Image Colorization"
(ECCV 2016), eq. 3-4, on the palette colours instead of the paper's 313 ab bins.

Cross-entropy over an imbalanced colour distribution favours the common, desaturated colours. The
rebalanced loss (losses/rebalanced.py) weights every pixel by the weight of its *target* colour q:

    w  proportional to  ((1 - lambda) * p~ + lambda / Q) ** -1,   normalised so that  sum_q p~_q w_q = 1

- p: the empirical distribution of the palette colours over the training pixels (bincount / count).
- p~: p smoothed over the palette with a Gaussian kernel on the colours' RGB distance, as the paper
  smooths its histogram in ab space (sigma = 5 there, half its bin spacing of 10). Here sigma is half
  the median distance between a palette colour and its nearest neighbour (0.065 for the shipped
  palette, in RGB units of [0, 1]). The kernel is normalised per source colour, so p~ still sums to
  1: p~_k = sum_j K_kj p_j with K_kj = G(|c_k - c_j|) / sum_i G(|c_i - c_j|).
- Q = the number of palette colours (24).
- lambda = 1 gives uniform weights, w = 1: exactly the plain cross-entropy. lambda = 0 gives pure
  inverse-frequency weights (not "off"!). The paper uses lambda = 0.5.
"""
import torch


def palette_distribution(targets, num_colours):
    """Empirical share of every palette colour among the pixels of `targets` (any shape of palette ids)."""
    counts = torch.bincount(targets.reshape(-1).long(), minlength=num_colours).double()
    if counts.numel() != num_colours:
        raise ValueError(f"targets hold colour ids up to {counts.numel() - 1}, but the palette has "
                         f"{num_colours} colours")
    total = counts.sum()
    if total == 0:
        raise ValueError("no target pixels to count colours in")
    return counts / total


def smoothing_sigma(palette):
    """Half the median nearest-neighbour distance between palette colours (RGB, [0, 1] units)."""
    palette = torch.as_tensor(palette, dtype=torch.float64)
    d = torch.cdist(palette, palette)
    d.fill_diagonal_(float("inf"))
    return 0.5 * float(d.min(dim=1).values.median())


def smooth_distribution(p, palette, sigma=None):
    """p~ = K p with a Gaussian kernel K over the palette colours' RGB distances (columns sum to 1).

    sigma None: `smoothing_sigma(palette)`; sigma 0: no smoothing (p~ = p)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if sigma is None:
        sigma = smoothing_sigma(palette)
    if sigma == 0:
        return p.clone()
    palette = torch.as_tensor(palette, dtype=torch.float64)
    kernel = torch.exp(-torch.cdist(palette, palette) ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(dim=0, keepdim=True)  # K[k, j]: share of colour j's mass moved to k
    return kernel @ p


def rebalance_weights(p, lam):
    """Zhang et al. eq. 4: w = ((1 - lam) p + lam / Q)^-1, scaled so that sum p w = 1. p: (Q,) distribution."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the rebalancing lambda must lie in [0, 1], got {lam}")
    mixed = (1.0 - lam) * p + lam / p.numel()  # p.numel() = Q
    if bool((mixed <= 0).any()):
        raise ValueError("lambda = 0 with a colour that never occurs gives it an infinite weight; "
                         "use lambda > 0")
    w = 1.0 / mixed
    return w / (p * w).sum()


def class_weights_from_targets(targets, palette, lam, sigma=None):
    """(weights (Q,) float32, smoothed distribution p~ (Q,) float64) for the training `targets`."""
    palette = torch.as_tensor(palette)
    p = smooth_distribution(palette_distribution(targets, len(palette)), palette, sigma)
    return rebalance_weights(p, lam).float(), p
