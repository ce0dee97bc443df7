"""Colourisation numbers of a checkpoint recomputed independently of the package's data code: the
fixture's validation horses are regenerated from tests/fixtures/cifar.py's image generator (no
unpickling), turned into grey (mean of R, G, B) and nearest-palette-colour targets here."""
import numpy as np
import torch
import torch.nn.functional as F


def val_metrics(ckpt_path, n_per_batch=20, horse_every=2):
    """{"loss": mean pixel cross-entropy, "acc": pixel accuracy, "mae_rgb": mean |argmax colour -
    true RGB| on the 0..255 scale} of the checkpoint's model on the fixture's test_batch horses
    (written by write_cifar_folder from make_images(n, 5); every horse_every-th image is a horse)."""
    from colorization import ColorizationModule
    from tests.fixtures.cifar import make_images

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    rgb = make_images(n_per_batch, 5)[::horse_every].astype(np.float64) / 255  # test_batch = the 6th file
    grey = torch.from_numpy(rgb.mean(axis=1, keepdims=True)).float()
    palette = np.asarray(checkpoint["palette"], np.float64)
    distances = ((rgb[:, None] - palette[None, :, :, None, None]) ** 2).sum(axis=2)
    target = torch.from_numpy(distances.argmin(axis=1))
    module = ColorizationModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        logits = module.eval()(grey)
    pred = logits.argmax(dim=1).numpy()
    return {"loss": F.cross_entropy(logits, target).item(),
            "acc": (logits.argmax(dim=1) == target).float().mean().item(),
            "mae_rgb": 255 * np.abs(palette[pred].transpose(0, 3, 1, 2) - rgb).mean()}
