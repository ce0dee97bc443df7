"""FineTunedDeepLabV3: frozen trunk, one trainable 1x1 conv, head(features(x)) == torchvision's forward,
features computed once (data/features.py) give the full model's logits, offline weights -> UserError.
Random weights (no download) and tiny images."""

import copy
import functools
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights

from data.features import feature_identity, trunk_features
from data.oxford17 import SPLIT_NAMES, Oxford17, normalise
from errors import UsageError, UserError
from models.deeplabv3 import build_deeplabv3
from tests.fixtures.oxford17 import write_oxford17

TRAINABLE = 2 * 256 + 2  # Conv2d(256, 2, 1): weight 2x256x1x1 + bias 2


def _random(backbone):
    with pytest.warns(UserWarning, match="randomly initialised"):
        return build_deeplabv3(backbone, weights="none")


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return _random("resnet50").eval()


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return _random("mobilenet_v3_large")


def test_only_the_new_last_layer_trains(resnet50, mobilenet):
    for model in (resnet50, mobilenet):
        assert model.model.aux_classifier is None
        assert sum(p.numel() for p in model.trainable_parameters()) == TRAINABLE
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable == ["model.classifier.4.weight", "model.classifier.4.bias"]
        assert model.last_layer.kernel_size == (1, 1) and model.last_layer.out_channels == 2
        assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)
        assert model.weights == "none" and model.weights_file is None


def test_train_mode_keeps_frozen_trunk_in_eval(mobilenet):
    model = mobilenet.train()
    assert model.training and model.last_layer.training
    frozen = [m for name, m in model.named_modules() if name and not name.startswith("model.classifier.4")
              and name not in ("model", "model.classifier")]
    assert frozen and not any(m.training for m in frozen)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # dropout in classifier[0] (ASPP) is off
    model.eval()
    assert not model.last_layer.training


def test_frozen_state_bit_identical_after_optimiser_steps(mobilenet):
    model = mobilenet.train()
    before = copy.deepcopy(model.state_dict())
    # even with every parameter handed to the optimiser, only the new layer may move
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(2, 3, 64, 64) * 3 + 1  # far from BN's running stats: they would move
        y = torch.randint(0, 2, (2, 64, 64))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert sorted(changed) == ["model.classifier.4.bias", "model.classifier.4.weight"]
    assert any("running_mean" in k for k in before)  # BN statistics were part of the comparison


@pytest.fixture()
def trained_scale_head(resnet50):
    """Head weights of a trained-like size (std 0.1) for the duration of a test."""
    layer = resnet50.last_layer
    saved = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    yield resnet50
    with torch.no_grad():
        layer.weight.copy_(saved)


def test_features_then_head_give_torchvisions_own_output(trained_scale_head):
    """head(features(x)) - the path of the feature cache - against torchvision's DeepLabV3.forward
    (backbone dict, classifier, its own upsampling), which shares no code with features/head.
    (forward(x) is defined as head(features(x)): comparing those two would check nothing.)"""
    model = trained_scale_head
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        tv = model.model(x)["out"]
        features = model.features(x)
        split = model.head(features, x.shape[-2:])
    assert tv.shape == split.shape == (2, 2, 64, 48)
    assert features.shape == (2, 256, 8, 6)  # output stride 8
    assert tv.abs().max().item() > 0.1  # non-trivial logits: the comparison means something
    assert (split - tv).abs().max().item() < 1e-5


def test_features_computed_once_give_the_full_models_logits(trained_scale_head, tmp_path, capsys):
    """The path segmentation.py takes: `trunk_features` over every split once (in memory here), then
    only the head runs; its logits are those of the whole network on the normalised images."""
    model = trained_scale_head
    root = write_oxford17(tmp_path / "flowers", n_classes=2, per_class=4, size=None)
    dm = Oxford17(root, image_size=64, batch_size=3, download=False, mean=model.mean, std=model.std,
                  checksums={"datasplits.mat": None})
    images = {name: dm.images(name) for name in SPLIT_NAMES}
    assert [len(images[name]) for name in SPLIT_NAMES] == [4, 2, 2]  # the fixture's datasplits.mat
    norm = functools.partial(normalise, mean=dm.mean, std=dm.std)
    features, info = trunk_features(model.features, images, norm,
                                    feature_identity(model.trunk_identity(), images, "32-true"),
                                    model.feature_shape(64), "cpu", store=None, batch_size=3)
    assert info == {"location": "memory", "bytes": 8 * 256 * 8 * 8 * 4, "reused": False, "key": None,
                    "splits": list(SPLIT_NAMES)}
    for name in SPLIT_NAMES:
        assert features[name].dtype == torch.float32 and features[name].shape == (len(images[name]), 256, 8, 8)
        with torch.no_grad():
            full = model.model(normalise(images[name], dm.mean, dm.std))["out"]  # torchvision's own forward
            cached = model.head(features[name], (64, 64))
        assert full.abs().max().item() > 0.1  # non-trivial logits: the comparison means something
        assert (cached - full).abs().max().item() < 1e-4


def test_offline_weights_raise_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):  # never touch the network, never hang
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    weights = DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1
    with pytest.raises(UserError) as info:
        build_deeplabv3("mobilenet_v3_large", weights="coco")
    message = str(info.value)
    assert Path(weights.url).name in message and weights.url in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_bad_names_raise_usage_error():
    with pytest.raises(UsageError, match="unknown backbone 'vgg16'; choose one of resnet101, resnet50, "
                                         "mobilenet_v3_large"):
        build_deeplabv3("vgg16", weights="none")
    with pytest.raises(UsageError, match="unknown weights 'imagenet'; choose one of coco, none"):
        build_deeplabv3("resnet50", weights="imagenet")


def test_random_trunk_is_the_same_network_whatever_the_seed():
    """weights=None: the frozen trunk is one fixed random network (a stable identity for the feature
    store); the new layer still follows the global seed."""
    torch.manual_seed(1)
    a = _random("mobilenet_v3_large")
    torch.manual_seed(2)
    b = _random("mobilenet_v3_large")
    sa, sb = a.state_dict(), b.state_dict()
    frozen = [k for k in sa if not k.startswith("model.classifier.4.")]
    assert frozen and all(torch.equal(sa[k], sb[k]) for k in frozen)
    assert not torch.equal(sa["model.classifier.4.weight"], sb["model.classifier.4.weight"])
    assert a.trunk_identity() == b.trunk_identity() == {
        "backbone": "mobilenet_v3_large", "weights": "random", "seed": 0, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "torchvision_builder": "deeplabv3_mobilenet_v3_large"}


@pytest.mark.parametrize("size", [32, 45, 64, 97])
def test_feature_shape_is_that_of_the_features(resnet50, mobilenet, size):
    for model in (resnet50, mobilenet):
        with torch.no_grad():
            features = model.features(torch.randn(1, 3, size, size))
        assert tuple(features.shape[1:]) == model.feature_shape(size)


def test_channels_last_trunk_gives_the_nchw_features(resnet50):
    """The trunk is kept channels-last for speed (segmentation.py's --channels-last, the default); with
    channels_last=False (--no-channels-last) it is NCHW and gives the same features."""
    conv = resnet50.model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert resnet50.last_layer.weight.is_contiguous()  # the trained layer and its checkpoint keep NCHW
    with pytest.warns(UserWarning, match="randomly initialised"):
        nchw = build_deeplabv3("resnet50", weights="none", channels_last=False).eval()
    assert all(p.is_contiguous() for p in nchw.parameters())
    assert nchw.state_dict().keys() == resnet50.state_dict().keys()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, plain = resnet50.features(x), nchw.features(x)
    assert fast.abs().max().item() > 0.1
    assert (fast - plain).abs().max().item() < 1e-4
