"""Tests of oceansar/hierarchy.py: Vo et al.'s resampling step (the hierarchy inside a curation is tested through
prune.py in test_prune.py, on one process and on 2 gloo ranks). CPU, tiny sizes."""

import torch

from oceansar import hierarchy, kmeans


def test_resampling_takes_the_truly_closest_points_not_the_lowest_indices():
    label = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    dist = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0])
    lay = kmeans._Layout(False, 0, 8)
    union = hierarchy._resample_union(label, dist, 2, 2, "closest", kmeans.make_generator(0), lay)
    assert union.tolist() == [2, 3, 4, 5]
    rand = hierarchy._resample_union(label, dist, 2, 3, "random", kmeans.make_generator(0), lay)
    assert len(rand) == 6 and (label[rand] == 0).sum() == 3
