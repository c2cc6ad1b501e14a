"""Contrastive image–text learning with a shared Transformer encoder."""

__version__ = "0.1.0"
