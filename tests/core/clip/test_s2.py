"""S2 multi-scale maps: shapes, the scale-1 identity, and tiles stitched back in their places."""

from __future__ import annotations

import torch

from core.clip.s2 import embed_s2, feature_map, multiscale_map, s2_dim, split_tiles, stitch_tiles


def test_scale_one_equals_the_plain_feature_map(standin_clip):
    visual = standin_clip.model.visual
    pixels = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(multiscale_map(visual, pixels, [1], 64), feature_map(visual, pixels))


def test_shapes_for_two_scales(standin_clip):
    visual = standin_clip.model.visual
    with torch.inference_mode():
        plain = feature_map(visual, torch.rand(1, 3, 64, 64))
        stacked = multiscale_map(visual, torch.rand(3, 3, 128, 128), [1, 2], 64)
    assert plain.shape == (1, 64, 4, 4)  # embed dim 64, 64 px / 16 px patches
    assert stacked.shape == (3, 128, 4, 4)  # channels concatenated, pooled to scale 1's grid
    vectors = embed_s2(standin_clip, torch.rand(3, 3, 128, 128), [1, 2])
    assert vectors.shape == (3, s2_dim(standin_clip, [1, 2])) == (3, 128)
    assert torch.allclose(torch.from_numpy(vectors).norm(dim=1), torch.ones(3), atol=1e-5)


def test_split_and_stitch_are_inverse_and_row_major():
    grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    tiles = split_tiles(grid, 2)
    assert tiles[:, 0, 0, 0].tolist() == [0.0, 2.0, 8.0, 10.0]  # top-left corners, row by row
    assert torch.equal(stitch_tiles(tiles, 2), grid)


def test_each_tile_lands_where_it_came_from(standin_clip):
    """Four quadrants with different content: the stitched scale-2 map's quadrant (i, j) is the
    feature map of tile (i, j) encoded alone."""
    visual = standin_clip.model.visual
    generator = torch.Generator().manual_seed(0)
    quadrants = [
        [torch.rand(1, 3, 64, 64, generator=generator) for _ in range(2)] for _ in range(2)
    ]
    image = torch.cat([torch.cat(row, dim=3) for row in quadrants], dim=2)  # (1, 3, 128, 128)
    with torch.inference_mode():
        stitched = multiscale_map(visual, image, [2], 64)  # one scale: no pooling
        assert stitched.shape == (1, 64, 8, 8)
        for i in range(2):
            for j in range(2):
                alone = feature_map(visual, quadrants[i][j])
                placed = stitched[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                assert torch.allclose(placed, alone, atol=1e-5), (i, j)
        swapped = feature_map(visual, quadrants[0][1])
        assert not torch.allclose(stitched[:, :, 0:4, 0:4], swapped, atol=1e-3)


def test_larger_tiles_are_resized_to_the_input_size(standin_clip):
    visual = standin_clip.model.visual
    with torch.inference_mode():
        stacked = multiscale_map(visual, torch.rand(1, 3, 128, 128), [1, 2], 64, max_split_size=128)
    assert stacked.shape == (1, 128, 4, 4)  # scale 2 is one 128 px tile, resized to 64
