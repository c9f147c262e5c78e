"""The back ends by name: one table, and the one way to build a configured back end from settings.

A new back end = one file in asd/backends/ (a Backend subclass naming its SETTINGS) + one line here
(docs/extending.md). The table names each class by its import path, so that option parsing reads it from
this source without importing anything and a back end's own libraries load only when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from asd.backends.base import Backend
from asd.embed.embedding_files import Split

REGISTRY: dict[str, str] = {
    "ensemble": "asd.backends.ensemble.Ensemble",  # W * z(EMBEDDING_BACKEND) + (1 - W) * z(mahalanobis)
    "knn": "asd.backends.knn.Knn",  # k-NN distance, a bank per domain
    "smote_knn": "asd.backends.knn.SmoteKnn",  # k-NN, the target bank grown by SMOTE
    "kmeans": "asd.backends.kmeans.KMeansBackend",  # distance to k-means centres of the source, the target normals
    "rescale": "asd.backends.rescale.Rescale",  # k-NN / local density, one bank
    "mahalanobis": "asd.backends.mahalanobis.StatsMahalanobis",  # Mahalanobis distance of the signal statistics
    "baseline_ae": "asd.backends.baseline_ae.BaselineAE",  # the official DCASE autoencoder, on the audio itself
}


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``; ValueError naming the registered ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown back end {name!r}; asd/backends/registry.py has {', '.join(REGISTRY)}")
    module, _, attribute = REGISTRY[name].rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def make_backend(name: str, settings: Mapping) -> Backend:
    """The back end ``name`` configured by ``settings`` (evaluate.py's, lower-case), unfitted."""
    return backend_class(name).from_settings(settings, make_backend)


def backend_factory(name: str, settings: Mapping) -> tuple[Callable[[tuple, Split], Backend], str]:
    """(a scoring.score_by_group factory fitting back end ``name`` on a group's normals, its grouping);
    refuses bad settings before any fitting."""
    grouping = make_backend(name, settings).group_by
    return (lambda key, normal: make_backend(name, settings).fit(normal)), grouping
