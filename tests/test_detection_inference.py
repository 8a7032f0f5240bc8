"""The inference copy of a detector: BatchNorm folded into its convs, channels-last, same detections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkd import Predictor
from detkd.models.detection import create_detector, fold_batch_norms, inference_copy, save_detector


def _with_statistics(detector: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics and an affine map that are not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in detector.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return detector


def test_a_folded_conv_computes_the_batch_norm_by_hand():
    """conv weight 2, bias 1 on a 1x1 input of 3: conv 7; BatchNorm mean 1, var 4 (eps 0), gamma 3,
    beta 0.5: 3 * (7 - 1) / 2 + 0.5 = 9.5. The folded conv: weight 2 * 3/2 = 3, bias (1 - 1) * 3/2 + 0.5."""
    conv = nn.Conv2d(1, 1, 1)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0), conv.bias.fill_(1.0)
        bn.running_mean.fill_(1.0), bn.running_var.fill_(4.0), bn.weight.fill_(3.0), bn.bias.fill_(0.5)
    block = nn.Sequential(conv, bn, nn.ReLU()).eval()
    assert fold_batch_norms(block) == 1
    assert isinstance(block[1], nn.Identity)
    assert block[0].weight.item() == pytest.approx(3.0) and block[0].bias.item() == pytest.approx(0.5)
    assert block(torch.full((1, 1, 1, 1), 3.0)).item() == pytest.approx(9.5)


def test_only_orders_the_forward_guarantees_are_folded():
    """A BatchNorm after a ReLU, or inside a module that calls its children in its own order, stays."""
    after_relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2)).eval()
    assert fold_batch_norms(after_relu) == 0 and isinstance(after_relu[2], nn.BatchNorm2d)

    class Own(nn.Module):  # registers conv then bn, applies bn to the input
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    own = Own().eval()
    assert fold_batch_norms(own) == 0 and isinstance(own.bn, nn.BatchNorm2d)


def test_folding_refuses_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))


@pytest.mark.parametrize("name", ["fcos_tiny_fpn", "retinanet_resnet18_fpn", "fasterrcnn_mobilenet_v3_fpn"])
def test_the_copy_keeps_the_outputs_and_leaves_the_original_alone(name):
    torch.manual_seed(0)
    detector = _with_statistics(create_detector(name, 3)).train()
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in detector.modules())
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    copy = inference_copy(detector)
    assert detector.training and not copy.training  # the original keeps its mode
    assert sum(isinstance(m, nn.BatchNorm2d) for m in detector.modules()) == batch_norms > 0
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())  # every one folded
    convs = [m for m in copy.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    image = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, found = detector.eval()(image), copy(image)
    for key in ("cls_logits", "box_regression", "boxes"):  # float rounding, relative to the values' scale
        difference = (getattr(found, key) - getattr(expected, key)).abs().max()
        assert difference <= 1e-5 * getattr(expected, key).abs().max(), key


def test_predictor_runs_the_copy_and_finds_the_same_detections(tmp_path):
    torch.manual_seed(0)
    detector = _with_statistics(create_detector("fcos_tiny_fpn", 3)).eval()
    with torch.no_grad():  # spread the untrained class scores so that some pass the 0.05 threshold
        detector.model.head.classification_head.cls_logits.weight.mul_(10)
    predictor = Predictor(save_detector(detector, tmp_path / "detector.pt"), max_detections=20)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in predictor.module.modules())
    pixels = (torch.rand(128, 128, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    found = predictor(pixels)
    expected = detector.predict(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255, max_detections=20)[0]
    assert 0 < len(found["boxes"]) == len(expected["boxes"])
    assert (found["labels"] == expected["labels"].numpy()).all()
    assert abs(found["boxes"] - expected["boxes"].numpy()).max() < 1e-3  # pixels
    assert abs(found["scores"] - expected["scores"].numpy()).max() < 1e-5
