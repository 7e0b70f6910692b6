"""Ready specs for model families users have. Import the submodule you need, e.g.
``from bucketwise.models.text import SentenceEmbedder``; each imports its framework."""
