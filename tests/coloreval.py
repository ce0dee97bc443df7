"""Colourisation numbers of a checkpoint recomputed independently of the package's data and metric code:
the fixture's validation horses are regenerated from tests/fixtures/cifar.py's image generator (no
unpickling), turned into grey (mean of R, G, B) and nearest-palette-colour targets here, and the
colour-quality numbers are computed here in numpy."""
import numpy as np
import torch
import torch.nn.functional as F


def colourfulness(rgb):
    """Hasler and Suesstrunk (2003) per image of (N, 3, H, W) RGB in [0, 1], on the 0..255 scale."""
    r, g, b = (255 * rgb[:, c].reshape(len(rgb), -1).astype(np.float64) for c in range(3))
    rg, yb = r - g, (r + g) / 2 - b
    return np.sqrt(rg.std(axis=1) ** 2 + yb.std(axis=1) ** 2) + 0.3 * np.sqrt(rg.mean(axis=1) ** 2
                                                                               + yb.mean(axis=1) ** 2)


def val_metrics(ckpt_path, n_per_batch=20, horse_every=2):
    """{"loss": mean pixel cross-entropy, "acc": pixel accuracy, "mae_rgb": mean |argmax colour -
    true RGB| on the 0..255 scale, "colourfulness_pred" / "colourfulness_true": mean colourfulness of
    the argmax-decoded and the true images, "confusion": (Q, Q) counts, rows = target} of the
    checkpoint's model on the fixture's test_batch horses (written by write_cifar_folder from
    make_images(n, 5); every horse_every-th image is a horse)."""
    from colorization import ColorizationModule
    from tests.fixtures.cifar import make_images

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    rgb = make_images(n_per_batch, 5)[::horse_every].astype(np.float64) / 255  # test_batch = the 6th file
    grey = torch.from_numpy(rgb.mean(axis=1, keepdims=True)).float()
    hparams = checkpoint["hyper_parameters"]
    palette = np.asarray(hparams["palette"], np.float64)
    distances = ((rgb[:, None] - palette[None, :, :, None, None]) ** 2).sum(axis=2)
    target = torch.from_numpy(distances.argmin(axis=1))
    module = ColorizationModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        logits = module.eval()(grey)
    pred = logits.argmax(dim=1).numpy()
    decoded = palette[pred].transpose(0, 3, 1, 2)
    q = len(palette)
    confusion = np.bincount((target.numpy() * q + pred).ravel(), minlength=q * q).reshape(q, q)
    return {"loss": F.cross_entropy(logits, target).item(),
            "acc": (logits.argmax(dim=1) == target).float().mean().item(),
            "mae_rgb": 255 * np.abs(decoded - rgb).mean(),
            "colourfulness_pred": colourfulness(decoded).mean(), "colourfulness_true": colourfulness(rgb).mean(),
            "confusion": confusion, "images": len(rgb)}
