"""CLIP score ensembling: region embeddings from crops or the CLIP map, and the geometric mean."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from react_dense.modeling.region_text import ClipScoreEnsemble, crop_embeddings


class MeanColourTower(nn.Module):
    """A stand-in image tower whose embedding is the crop's mean colour: crops are easy to check."""

    image_size = 8
    output_dim = 3

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.inputs = []

    def forward(self, images):
        self.inputs.append(images.shape)
        return images.mean(dim=(2, 3)) * self.scale


def _scene(first: int, second: int) -> torch.Tensor:
    """A 3x16x48 image: a square of colour `first` at x 4..12, of colour `second` at x 36..44."""
    image = torch.zeros(3, 16, 48)
    image[first, 4:12, 4:12] = 1.0
    image[second, 4:12, 36:44] = 1.0
    return image


def test_crops_embed_each_box_of_each_image():
    tower = MeanColourTower()
    images = torch.stack([_scene(0, 2), _scene(1, 0)])
    left, right = [4.0, 4.0, 12.0, 12.0], [36.0, 4.0, 44.0, 12.0]
    boxes = [torch.tensor([left, right]), torch.tensor([right, left])]
    embeddings = crop_embeddings(tower, images, boxes, scale=1.0, chunk=3)
    assert embeddings.shape == (4, 3)
    assert embeddings.argmax(dim=1).tolist() == [0, 2, 0, 1]
    assert tower.inputs == [(3, 3, 8, 8), (1, 3, 8, 8)]  # chunked, resized to the tower's input
    # a larger crop takes in background around the square (its mean colour drops), not the other square
    wider = crop_embeddings(tower, images[:1], [torch.tensor([left])], scale=2.0)
    assert wider[0, 0] < embeddings[0, 0] and wider[0, 2] == 0


def test_ensemble_scores_and_state():
    tower = MeanColourTower()
    ensemble = ClipScoreEnsemble(base_weight=0.25, novel_weight=0.5, clip_temperature=1.0, regions="crops", tower=tower)
    assert ensemble.state_dict() == {}, "the backbone owns the tower's weights"
    detector = torch.tensor([[0.25, 0.25]])
    clip = torch.tensor([[1.0, 1.0]])
    combined = ensemble(detector, clip, torch.tensor([True, False]))
    torch.testing.assert_close(combined, torch.tensor([[0.25 ** 0.75, 0.5]]))

    images = _scene(0, 2)[None]
    regions = ensemble.region_embeddings([torch.tensor([[36.0, 4.0, 44.0, 12.0]])], images)
    scores = ensemble.clip_scores(regions, torch.eye(3))
    assert scores.argmax().item() == 2 and scores.sum().item() == pytest.approx(1.0)


def test_map_regions_pool_the_clip_map_and_need_it():
    ensemble = ClipScoreEnsemble(regions="map")
    clip_map = torch.zeros(1, 3, 4, 12)
    clip_map[0, 1, :, 6:] = 1.0  # the right half of the map is class 1
    regions = ensemble.region_embeddings([torch.tensor([[28.0, 0.0, 44.0, 16.0]])], torch.zeros(1, 3, 16, 48), clip_map, 4)
    assert regions.argmax().item() == 1
    with pytest.raises(ValueError, match="CLIP map"):
        ensemble.region_embeddings([torch.zeros(1, 4)], torch.zeros(1, 3, 16, 48))
    with pytest.raises(ValueError, match="regions 'boxes'"):
        ClipScoreEnsemble(regions="boxes")
    with pytest.raises(ValueError, match="needs the CLIP image tower"):
        ClipScoreEnsemble(regions="crops")
