"""gecko: raw passages in, a trained text embedder out (Gecko, arXiv 2403.20327)."""

__version__ = "0.1.0"
