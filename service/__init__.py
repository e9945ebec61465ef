"""hfserve: a continuous-batching, OpenAI-compatible server for Hugging Face causal language models."""

__version__ = "0.1.0"
