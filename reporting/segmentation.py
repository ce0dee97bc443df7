"""What a segmentation run shows and writes: TensorBoard charts and grids, PNGs, the no-image baseline and its
summary. `data` is the Oxford17 DataModule, `served` what the Trainer was given (it, or the trunk's features).
"""
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from data.oxford17 import IGNORE_INDEX
from reporting.figures import plot_curves, save_image_rows
from training.callbacks import ValidationGrid, chart

LAYOUT = {"segmentation": {"loss (train, val)": chart("train/loss", "val/loss"),
                           "val IoU (mIoU, flower)": chart("val/miou", "val/iou_flower")}}
BASELINE_RULE = ("no image: the mean training mask at the training size (flower share of each pixel over "
                 "the training masks, unlabelled pixels left out), flower where it is >= 0.5")
MASK_COLOURS = {"background": (0.0, 0.0, 0.0), "flower": (1.0, 1.0, 1.0),
                "ignored: unlabelled border band": (0.5, 0.5, 0.5)}


def mask_to_rgb(mask, ignore_index):
    """(N, H, W) class ids (0 background, 1 flower, `ignore_index`) -> (N, 3, H, W) MASK_COLOURS."""
    table = torch.tensor(list(MASK_COLOURS.values()), dtype=torch.float32)
    idx = torch.where(mask == ignore_index, 2, mask.long()).cpu()
    return table[idx].permute(0, 3, 1, 2)


@torch.no_grad()
def sample_rows(module, data, served, n=4):
    """(label, images) rows of fixed validation images of several classes: image | ground truth | prediction."""
    index = data.val_sample_indices(n)
    x, _ = served.val_set.__getitems__(index)
    masks = data.split_masks("val")[torch.as_tensor(index)].long()
    was_training = module.training
    module.eval()
    preds = module.logits(x.to(module.device), masks.shape[-2:]).max(dim=1).indices.cpu()
    module.train(was_training)
    images = data.images("val")[torch.as_tensor(index)]
    return [("image", images.float() / 255), ("ground truth", mask_to_rgb(masks, IGNORE_INDEX)),
            ("prediction", mask_to_rgb(preds, IGNORE_INDEX))]


def validation_grid(data, served):
    return ValidationGrid(lambda module, n: sample_rows(module, data, served, n),
                          "val/predictions (image | truth | prediction; grey: ignored band)", 6)


def mean_mask_prediction(train_masks):
    """(S, S) 0/1 prediction of the no-image baseline from uint8 training masks {0, 1, IGNORE_INDEX}."""
    masks = torch.as_tensor(train_masks)
    labelled = (masks != IGNORE_INDEX).sum(0)
    flower = (masks == 1).sum(0)
    return (flower.double() >= 0.5 * labelled.double()).long() * (labelled > 0)


def no_image_baseline(data):
    """The same prediction for every image (`mean_mask_prediction`), scored with the runs' mIoU and
    flower IoU on val and test: how much of a run's mIoU needs no image at all."""
    prior = mean_mask_prediction(data.split_masks("train"))
    out = {"rule": BASELINE_RULE, "flower_pixels": int(prior.sum())}
    for split in ("val", "test"):
        masks = data.split_masks(split).long()
        if len(masks):
            preds = prior.expand_as(masks)
            iou = MulticlassJaccardIndex(2, average="none", ignore_index=IGNORE_INDEX)(preds, masks)
            out[f"{split}_miou"] = float(MulticlassJaccardIndex(2, ignore_index=IGNORE_INDEX)(preds, masks))
            out[f"{split}_iou_flower"] = float(iou[1])
    return out


def describe_trunk(identity):
    if not identity:
        return "not recorded"
    values = (f"random seed {identity.get('seed')}" if identity.get("weights") == "random" else
              f"{identity.get('file')} sha256 {str(identity.get('sha256'))[:12]}")
    return f"{identity.get('backbone')}, {values}"


def write_results(module, data, served, config, run, history, test_metrics):
    """curves.png and predictions.png; the task's summary fields. `module` holds the best checkpoint's weights."""
    hp = module.hparams
    baseline = no_image_baseline(data)
    best_miou, best_epoch = history.best("val/miou", "max")
    title = f"DeepLabV3-{hp.backbone} ({'random' if hp.weights == 'none' else hp.weights} weights), {hp.loss} loss"
    plot_curves(history.history, [("loss", ["train/loss", "val/loss"]), ("val mIoU", ["val/miou"])],
                run.results / "curves.png", f"{title}: per epoch",
                lines={"val mIoU": [(f"no-image baseline ({baseline['val_miou']:.3f})", baseline["val_miou"])]})
    legend = list(MASK_COLOURS.items())[:3 if data.unlabelled == "ignore" else 2]  # grey only where a band is ignored
    save_image_rows(sample_rows(module, data, served, 6), run.results / "predictions.png",
                    f"{title}: validation images, best checkpoint (epoch {best_epoch})", legend=legend)
    return dict(
        loss=hp.loss, backbone=hp.backbone, weights=hp.weights, trunk=module.model.trunk_identity(),
        split=config.split, image_size=hp.image_size, batch_size=config.batch_size, lr=hp.lr, seed=config.seed,
        inputs=module.inputs, feature_store=getattr(served, "info", None), baseline=baseline,
        best_val_miou=best_miou, best_val_miou_epoch=best_epoch,
        final_val_miou=history.last("val/miou"), final_val_iou_flower=history.last("val/iou_flower"),
        test_miou=test_metrics.get("test/miou"), test_iou_flower=test_metrics.get("test/iou_flower"),
        data={**data.source, "split_source": data.split_source, "checksum": data.data_checksum(),
              "counts": {k: len(v) for k, v in data.split_numbers.items()}})


def headline(s):
    return (f"best val mIoU {s['best_val_miou']:.4f} at epoch {s['best_val_miou_epoch']}; test mIoU "
            f"{s['test_miou']:.4f}; no-image baseline (mean training mask): val mIoU {s['baseline']['val_miou']:.4f}, "
            f"test mIoU {s['baseline']['test_miou']:.4f}")


def metrics(s):
    return {"best_val_miou": s["best_val_miou"], "final_val_miou": s["final_val_miou"], "test_miou": s["test_miou"],
            "baseline_val_miou": s["baseline"].get("val_miou")}
