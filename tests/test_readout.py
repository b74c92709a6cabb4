"""The one dense readout (react_core.modeling.readout) and the box pooling that reads it."""
from __future__ import annotations

import copy

import pytest
import torch

from react_core.modeling import load_clip
from react_core.modeling.gated import GATED_ATTR, add_gated_blocks, host_blocks
from react_core.modeling.readout import dense_readout, pool_boxes, readout_dim, readout_stride

from conftest import TINY_RESNET

@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    return {"vit": load_clip("react-tiny").model.visual.eval(), "resnet": load_clip(TINY_RESNET).model.visual.eval()}


@pytest.mark.parametrize("kind, stride, dim", [("vit", 8, 128), ("resnet", 32, 32)])
def test_shapes_at_any_input_size(towers, kind, stride, dim):
    visual = towers[kind]
    assert (readout_stride(visual), readout_dim(visual)) == (stride, dim)
    with torch.no_grad():
        out = dense_readout(visual, torch.randn(2, 3, 70, 100))
    assert out.shape == (2, dim, -(-70 // stride), -(-100 // stride))


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_closed_gates_give_the_base_readout_bit_for_bit_and_open_ones_change_it(towers, kind):
    base = towers[kind]
    gated = copy.deepcopy(base)
    add_gated_blocks(gated, k=2)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = dense_readout(base, images)
        assert torch.equal(dense_readout(gated, images), expected)
        for name, param in gated.named_parameters():
            if name.endswith("alpha_attn"):
                param.fill_(1.0)
        assert not torch.allclose(dense_readout(gated, images), expected, atol=1e-4)


def test_the_readout_trains_the_gated_blocks(towers):
    gated = copy.deepcopy(towers["vit"])
    add_gated_blocks(gated, k=1)
    for name, param in gated.named_parameters():
        param.requires_grad_(GATED_ATTR in name)
    block = getattr(host_blocks(gated)[-1], GATED_ATTR)
    with torch.no_grad():
        block.alpha_attn.fill_(0.5)
    dense_readout(gated, torch.randn(1, 3, 64, 64)).square().mean().backward()
    assert block.attn.in_proj_weight.grad.abs().sum() > 0


def test_residual_variant_keeps_the_last_blocks_residual_and_mlp(towers):
    visual = towers["vit"]
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(dense_readout(visual, images), dense_readout(visual, images, residual=True), atol=1e-3)
    with pytest.raises(ValueError, match="ViT towers only"):
        dense_readout(towers["resnet"], images, residual=True)


def test_pool_boxes_means_over_boxes_and_masks():
    feature_map = torch.zeros(2, 2, 4, 8)
    feature_map[0, 0, :, :4] = 1.0  # image 0: channel 0 on its left half
    feature_map[1, 1] = 1.0  # image 1: channel 1 everywhere
    boxes = [torch.tensor([[4.0, 4.0, 24.0, 28.0], [40.0, 4.0, 60.0, 28.0]]), torch.tensor([[8.0, 8.0, 24.0, 24.0]])]
    pooled = pool_boxes(feature_map, boxes, stride=8)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    # mask pooling: the whole-image box with a mask on its left half reads only the left half
    whole = [torch.tensor([[0.0, 0.0, 64.0, 32.0]]), torch.zeros(0, 4)]
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    assert pool_boxes(feature_map, whole, stride=8)[0, 0].item() == pytest.approx(0.5, abs=0.05)
    assert pool_boxes(feature_map, whole, stride=8, masks=mask)[0, 0].item() > 0.95


def test_pool_boxes_equals_the_mean_of_roi_align_values_and_gradients():
    """The separable box mean is roi_align's (aligned, 7 x 7 bins of 2 x 2 samples) averaged, for boxes
    inside, across and beyond the map's edges and images without boxes, and so is its gradient."""
    from torchvision.ops import roi_align

    generator = torch.Generator().manual_seed(0)
    feature_map = torch.randn(3, 5, 16, 20, dtype=torch.float64, generator=generator, requires_grad=True)
    corners = torch.rand(3, 40, 2, dtype=torch.float64, generator=generator) * 200 - 20
    sizes = torch.rand(3, 40, 2, dtype=torch.float64, generator=generator) * 120
    boxes = list(torch.cat([corners, corners + sizes], dim=2))
    edges = torch.tensor([[0, 0, 160, 128], [150, 120, 160, 128], [-30, -30, -10, -10], [159.9, 127.9, 170, 140], [8, 8, 8.5, 8.5]])
    boxes[1], boxes[2] = boxes[1][:0], torch.cat([boxes[2], edges.to(torch.float64)])
    expected = roi_align(feature_map, boxes, output_size=(7, 7), spatial_scale=1 / 8, sampling_ratio=2, aligned=True).flatten(2).mean(-1)
    pooled = pool_boxes(feature_map, boxes, stride=8)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-12)
    weights = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), feature_map)
    (grad,) = torch.autograd.grad((pooled * weights).sum(), feature_map)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
