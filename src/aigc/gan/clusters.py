"""Self-conditioning: k-means clusters of the training images stand in for class labels.

Liu et al. (2020), "Diverse Image Generation via Self-Conditioned GANs": a conditional GAN
trained on cluster labels it found itself, no annotation needed, must cover every cluster,
so it cannot drop a mode the clustering found. Here the clusters are found once, before
training, by k-means on the pixels (the paper clusters D's features and re-clusters as D
learns). The generator keeps the clusters' share of the data (``cluster_prior``) and reads
the cluster of each sample from its own noise (:func:`cluster_of_noise`), so from outside it
is an unconditional generator: an image is a function of its noise vector alone.

A class-conditional model can be self-conditioned too: then k-means splits each class into
clusters of its own (the class splitting of Grinblat et al. 2017), G and D see (class, cluster),
and the generator reads the cluster within the requested class from its noise.
"""

from __future__ import annotations

import math

import torch

KMEANS_ITERATIONS = 100  # Lloyd iterations at most; stops earlier once no assignment changes
# Larger data: the centroids are fitted on a seeded sample of this many points, then every point
# joins its nearest (100 clusters of 50,000 Stacked MNIST images took minutes on one AVX2 core).
KMEANS_FIT_POINTS = 10_000


def _squared_distances(points: torch.Tensor, point_norms: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, D), their squared norms (N, 1), (K, D) -> (N, K) squared Euclidean distances. The
    caller computes the norms once: k-means++ calls this K times with one centroid each."""
    return (point_norms - 2 * points @ centroids.T + centroids.square().sum(1)).clamp_min(0)


def _kmeans_plus_plus(points: torch.Tensor, point_norms: torch.Tensor, k: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Arthur & Vassilvitskii (2007): each next centroid drawn with probability proportional
    to its squared distance from the nearest centroid so far. (K, D)."""
    first = torch.randint(len(points), (1,), generator=generator)
    centroids = points[first]
    nearest = _squared_distances(points, point_norms, centroids).squeeze(1)
    for _ in range(1, k):
        chosen = torch.multinomial(nearest / nearest.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, points[chosen]])
        nearest = torch.minimum(nearest, _squared_distances(points, point_norms, points[chosen]).squeeze(1))
    return centroids


def kmeans(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Cluster numbers (N,) of ``points`` (N, D): k-means++ seeding, then Lloyd's iterations, in
    float64 (the expanded squared distances lose digits in float32), on at most KMEANS_FIT_POINTS
    of them (the rest join their nearest centroid). Clusters are numbered by size, largest first."""
    if not 1 <= k <= len(points):
        raise ValueError(f"k-means needs 1 <= k <= {len(points)} points, got k = {k}")
    points = points.flatten(1).double()
    point_norms = points.square().sum(1, keepdim=True)  # (N, 1)
    generator = torch.Generator().manual_seed(seed)
    fit_count = max(KMEANS_FIT_POINTS, k)
    if len(points) <= fit_count:
        assignment = _lloyd(points, point_norms, k, generator)[1]
    else:
        sample = torch.randperm(len(points), generator=generator)[:fit_count]
        centroids = _lloyd(points[sample], point_norms[sample], k, generator)[0]
        assignment = torch.cat([_squared_distances(chunk, chunk_norms, centroids).argmin(1) for chunk, chunk_norms
                                in zip(points.split(KMEANS_FIT_POINTS), point_norms.split(KMEANS_FIT_POINTS))])
    by_size = torch.bincount(assignment, minlength=k).argsort(descending=True, stable=True)
    return by_size.argsort()[assignment]


def _lloyd(points: torch.Tensor, point_norms: torch.Tensor, k: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations from k-means++ centroids: (centroids (K, D), assignment (N,)). An empty
    cluster is re-seeded with a point far from every centroid."""
    centroids = _kmeans_plus_plus(points, point_norms, k, generator)
    assignment = torch.full((len(points),), -1, dtype=torch.long)
    for _ in range(KMEANS_ITERATIONS):
        distances = _squared_distances(points, point_norms, centroids)
        new_assignment = distances.argmin(1)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(points.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            farthest = distances.min(1).values.topk(len(empty)).indices
            centroids[empty] = points[farthest]
    return centroids, assignment


def kmeans_within_classes(points: torch.Tensor, classes: torch.Tensor, num_classes: int, k: int,
                          seed: int) -> torch.Tensor:
    """k clusters within each class, found by :func:`kmeans` on that class's points alone:
    (N,) labels ``class * k + cluster``, the clusters of a class numbered by size."""
    labels = torch.empty(len(points), dtype=torch.long)
    for label in range(num_classes):
        members = (classes == label).nonzero().squeeze(1)
        labels[members] = label * k + kmeans(points[members], k, seed + label)
    return labels


def cluster_prior(assignment: torch.Tensor, k: int, num_classes: int = 0) -> torch.Tensor:
    """Each cluster's share of the data, (K,) float32 summing to 1; with classes, each cluster's
    share of its class, (num_classes, K) with rows summing to 1 (``assignment`` as
    :func:`kmeans_within_classes` numbers it)."""
    counts = torch.bincount(assignment, minlength=max(num_classes, 1) * k).float()
    if num_classes:
        counts = counts.view(num_classes, k)
    return counts / counts.sum(-1, keepdim=True)


def cluster_of_noise(z: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """The cluster of each noise vector z (B, z_dim): z[:, 0] ~ N(0, 1) mapped to a uniform
    u = Phi(z_0), then through the inverse of the clusters' cumulative distribution, so cluster c
    comes with probability prior[c] and the same z always gives the same cluster. A prior (K,)
    gives (B,); one row per class (C, K) gives the cluster within every class, (B, C)."""
    uniform = 0.5 * (1 + torch.erf(z[:, 0].float() / math.sqrt(2)))  # (B,)
    edges = prior.float().cumsum(-1)  # (K,) or (C, K)
    # how many edges lie at or below u: the inverse CDF, as comparisons (exportable, unlike searchsorted)
    below = edges <= uniform.view(-1, *[1] * edges.dim())  # (B, K) or (B, C, K)
    return below.sum(-1).clamp_max(prior.shape[-1] - 1)
