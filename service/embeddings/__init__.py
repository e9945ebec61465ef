"""Sentence embeddings: an encoder model and its own dynamic batcher, separate from the generation engine."""
