"""The losses: soft IoU (hand-worked values, gradient, edge cases: empty, perfect, ignored pixels), the plain
cross-entropy, and the table of losses by name."""

import math

import pytest
import torch

from losses.registry import LOSSES, make_loss
from losses.iou import SoftIoULoss, soft_iou_loss

LN3 = math.log(3.0)


def _worked_example():
    """One 2x2 image. Logits (background 0, flower l) give X = sigmoid(l):
    l = [0, ln3, -ln3, 0] -> X = [0.5, 0.75, 0.25, 0.5]; Y = [1, 1, 0, 0].
    I = 0.5 + 0.75 = 1.25; U = (0.5+1-0.5) + (0.75+1-0.75) + 0.25 + 0.5 = 2.75;
    L = 1 - 1.25 / 2.75 = 6/11."""
    flower = torch.tensor([[0.0, LN3], [-LN3, 0.0]], dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(flower), flower])[None]  # (1, 2, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    return logits, target


def test_hand_worked_example():
    logits, target = _worked_example()
    assert soft_iou_loss(logits, target).item() == pytest.approx(6 / 11, abs=1e-6)
    assert SoftIoULoss()(logits, target).item() == pytest.approx(6 / 11, abs=1e-6)


def test_only_the_logit_difference_matters_softmax_channel_1():
    logits, target = _worked_example()
    assert soft_iou_loss(logits + 5.0, target).item() == pytest.approx(6 / 11, abs=1e-6)
    swapped = logits.flip(1)  # flower channel now [0,...], background l: X = 1 - old X
    # X = [0.5, 0.25, 0.75, 0.5]: I = 0.75, U = 1 + 1 + 0.75 + 0.5 = 3.25
    assert soft_iou_loss(swapped, target).item() == pytest.approx(1 - 0.75 / 3.25, abs=1e-6)


def test_batch_mean_of_per_image_losses():
    logits, target = _worked_example()
    perfect = torch.where(target == 1, 30.0, -30.0).to(torch.float64)
    perfect_logits = torch.stack([torch.zeros_like(perfect), perfect], dim=1)
    batch = soft_iou_loss(torch.cat([logits, perfect_logits]), torch.cat([target, target]))
    assert batch.item() == pytest.approx((6 / 11 + 0) / 2, abs=1e-6)


def test_ignored_pixels_leave_both_sums():
    logits, target = _worked_example()
    # add a column of ignored pixels with confident, wrong predictions
    extra_logits = torch.cat([logits, torch.full((1, 2, 2, 1), 0.0, dtype=torch.float64)], dim=-1)
    extra_logits[0, 1, :, 2] = torch.tensor([9.0, -9.0])
    extra_target = torch.cat([target, torch.tensor([[[255], [255]]])], dim=-1)
    assert soft_iou_loss(extra_logits, extra_target, ignore_index=255).item() == pytest.approx(6 / 11, abs=1e-6)
    assert SoftIoULoss(ignore_index=255)(extra_logits, extra_target).item() == pytest.approx(6 / 11, abs=1e-6)
    # By default (ignore_index None) every pixel counts and 255 is not a flower: the extra column holds
    # X = sigmoid(9) and sigmoid(-9) with Y = 0, so I = 1.25 and U = 2.75 + sigmoid(9) + sigmoid(-9) = 3.75.
    expected = 1 - 1.25 / 3.75
    assert soft_iou_loss(extra_logits, extra_target).item() == pytest.approx(expected, abs=1e-6)
    assert SoftIoULoss()(extra_logits, extra_target).item() == pytest.approx(expected, abs=1e-6)
    counted = extra_target.clone()
    counted[counted == 255] = 0
    assert soft_iou_loss(extra_logits, counted, ignore_index=-1).item() == pytest.approx(expected, abs=1e-6)


def test_gradient_matches_hand_derivation():
    """dL/dX_i = -(Y_i U - I (1 - Y_i)) / U^2 and dX/dl = X (1 - X):
    pixel 0 (Y=1, X=0.5): -(2.75)/2.75^2 * 0.25 = -1/11;
    pixel 2 (Y=0, X=0.25): 1.25/2.75^2 * 0.1875 = 0.0309917..."""
    logits, target = _worked_example()
    logits.requires_grad_(True)
    soft_iou_loss(logits, target).backward()
    grad = logits.grad[0]
    assert grad[1, 0, 0].item() == pytest.approx(-1 / 11, abs=1e-6)
    assert grad[1, 1, 0].item() == pytest.approx(1.25 / 2.75**2 * 0.1875, abs=1e-6)
    assert torch.allclose(grad[0], -grad[1])  # softmax: only l1 - l0 matters


def test_gradcheck_float64():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 3, 4))
    target[0, 0, :2] = 255
    assert torch.autograd.gradcheck(lambda z: soft_iou_loss(z, target, ignore_index=255), (logits,))


def test_perfect_prediction_is_about_zero():
    target = torch.tensor([[[0, 1, 1], [0, 255, 1]]])
    flower = torch.where(target == 1, 20.0, -20.0)
    logits = torch.stack([torch.zeros_like(flower), flower], dim=1)
    assert soft_iou_loss(logits, target, ignore_index=255).item() == pytest.approx(0.0, abs=1e-6)


def test_empty_masks_give_no_nan():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1] = 255  # every pixel ignored
    logits = torch.zeros(2, 2, 4, 4, requires_grad=True)
    with torch.no_grad():
        logits[:, 0] = 40.0  # X = exp(-40) ~ 4e-18: no flower predicted
    loss = soft_iou_loss(logits, target, ignore_index=255)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()
    # no flower in the truth but predicted flower: I = 0, so L is about 1
    half = torch.zeros(1, 2, 4, 4)
    assert soft_iou_loss(half, target[:1], ignore_index=255).item() == pytest.approx(1.0, abs=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        soft_iou_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        soft_iou_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))


def test_count_is_the_number_of_images():
    assert SoftIoULoss(ignore_index=255).count(torch.zeros(3, 4, 4, dtype=torch.long)) == 3


# ----------------------------------------------------------------------------- cross-entropy and the table

def test_cross_entropy_by_hand_with_and_without_ignored_pixels():
    """Two pixels, logits (0, ln 3): p(class 1) = 3/4, p(class 0) = 1/4. Targets 1 and 0 give
    -ln(3/4) and -ln(1/4); the second one ignored leaves -ln(3/4)."""
    logits = torch.tensor([0.0, LN3], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 1, 2).contiguous()
    target = torch.tensor([[[1, 0]]])
    both = (-math.log(0.75) - math.log(0.25)) / 2
    plain = make_loss("ce")
    assert plain(logits, target).item() == pytest.approx(both, abs=1e-12)
    assert [t.item() for t in plain.terms(logits, target)] == pytest.approx([both, both], abs=1e-12)
    assert plain.count(target) == 2
    ignoring = make_loss("ce", ignore_index=255)
    masked = torch.tensor([[[1, 255]]])
    assert ignoring(logits, masked).item() == pytest.approx(-math.log(0.75), abs=1e-12)
    assert ignoring.count(masked) == 1


def test_make_loss_refuses_unknown_names():
    assert list(LOSSES) == ["ce", "iou"]  # what --loss offers, in this order
    assert type(make_loss("iou", ignore_index=255)) is SoftIoULoss and make_loss("iou").ignore_index is None
    with pytest.raises(ValueError, match="unknown loss 'dice'; choose one of: ce, iou"):
        make_loss("dice")
