"""Streaming online-learning recommender: Kafka in, River models, top-K recommendations out."""

__all__ = ["__version__"]

__version__ = "0.1.0"
