"""Two-stage recommendation: retrieve a few hundred candidates, then score only those.

Contract: given a user and what they interacted with, :meth:`CandidateRetriever.candidates_one`
returns at most ``sources x per_source`` candidate items, none of them excluded. The sources
are the models whose own ranking already costs the same at any catalogue size, asked for
their ``per_source`` best items:

- the neighbours of the user's recent items: every :class:`~stream.models.knn.ItemKNN`
  (``knn``, ``sequence``), whose scores only reach the neighbour lists of those items;
- the trending items: the popularity model's sorted head (the pipeline's own popularity
  model, or its cold-start fallback).

A source is a model whose class sets ``retrieves = True``; it contributes
``retrieve_one(user, n, exclude)`` (the items of its ``top_k``, without scores or reasons).
Every other model then ranks with :meth:`~stream.models.base.Recommender.top_k_among` over the
candidates; the sources rank with their own ``top_k``, as in exact ranking.
``STREAM_RETRIEVAL=exact`` ranks every model over the whole catalogue instead.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from typing import Literal

from stream.models.base import Recommender, Scored

__all__ = ["CandidateRetriever", "RetrievalMode", "Round", "is_source"]

logger = logging.getLogger(__name__)

RetrievalMode = Literal["candidates", "exact"]


def is_source(model: Recommender) -> bool:
    """Whether ``model`` feeds retrieval (its own top-K is flat in the catalogue size)."""
    return bool(getattr(model, "retrieves", False))


class Round(dict[str, list[Scored]]):
    """The rankings made for one user at one moment (before learning, or after it), by model
    name, and the candidate set they were scored on (retrieved at most once per round)."""

    __slots__ = ("candidates",)

    def __init__(self) -> None:
        super().__init__()
        self.candidates: list[Hashable] | None = None


class CandidateRetriever:
    """The union of the sources' best ``per_source`` items, in source order.

    Parameters
    ----------
    sources
        Name -> model asked for candidates (``retrieve_one``).
    per_source
        Items asked of each source.

    Examples
    --------
    >>> from stream.models.popularity import Popularity
    >>> pop = Popularity()
    >>> for item in ["a", "b", "b", "c"]:
    ...     pop.learn_one("u", item, 1.0, {"implicit": True})
    >>> retriever = CandidateRetriever({"popularity": pop}, per_source=2)
    >>> retriever.candidates_one("v", {"b": None}, Round())
    ['c', 'a']
    """

    def __init__(self, sources: dict[str, Recommender], per_source: int) -> None:
        if per_source < 1:
            raise ValueError(f"per_source must be at least 1, got {per_source}")
        self.sources = sources
        self.per_source = per_source

    def candidates_one(
        self, user: Hashable, exclude: Iterable[Hashable], round_: Round
    ) -> list[Hashable]:
        """At most ``len(sources) * per_source`` items for ``user``, none in ``exclude``."""
        if round_.candidates is None:
            found: dict[Hashable, None] = {}
            n = self.per_source
            for model in self.sources.values():
                found.update(dict.fromkeys(model.retrieve_one(user, n, exclude)))
            round_.candidates = list(found)
        return round_.candidates
