"""The back ends by name: one table, and the one way to build a configured back end from settings.

A new back end = one file in asd/backends/ (a Backend subclass naming its SETTINGS) + one line here
(docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from asd.backends.base import Backend
from asd.backends.ensemble import Ensemble
from asd.backends.kmeans import KMeansBackend
from asd.backends.knn import Knn, SmoteKnn
from asd.backends.mahalanobis import StatsMahalanobis
from asd.backends.rescale import Rescale
from asd.embedding_files import Split

REGISTRY: dict[str, type[Backend]] = {
    "ensemble": Ensemble,  # W * z(EMBEDDING_BACKEND) + (1 - W) * z(mahalanobis), per section
    "knn": Knn,  # k-NN distance, a bank per domain
    "smote_knn": SmoteKnn,  # k-NN, the target bank grown by SMOTE
    "kmeans": KMeansBackend,  # distance to k-means centres of the source, the target normals
    "rescale": Rescale,  # k-NN / local density, one bank
    "mahalanobis": StatsMahalanobis,  # Mahalanobis distance of the signal statistics
}


def make_backend(name: str, settings: Mapping) -> Backend:
    """The back end ``name`` configured by ``settings`` (evaluate.py's, lower-case), unfitted."""
    if name not in REGISTRY:
        raise ValueError(f"unknown back end {name!r}; asd/backends/registry.py has {', '.join(REGISTRY)}")
    return REGISTRY[name].from_settings(settings, make_backend)


def backend_factory(name: str, settings: Mapping) -> tuple[Callable[[tuple, Split], Backend], str]:
    """(a scoring.score_by_group factory fitting back end ``name`` on a group's normals, its grouping);
    refuses bad settings before any fitting."""
    grouping = make_backend(name, settings).group_by
    return (lambda key, normal: make_backend(name, settings).fit(normal)), grouping
