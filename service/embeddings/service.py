"""The embedding model, its tokenizer and its batcher, as the HTTP layer sees them."""

from __future__ import annotations

from service.embeddings.batcher import EmbeddingBatcher
from service.embeddings.model import EmbeddingModel
from service.engine.tokenizer import Tokenizer
from service.errors import BadRequestError


class EmbeddingService:
    def __init__(self, path: str, device: str = "cpu", batch_wait_timeout_s: float = 0.005) -> None:
        self.model = EmbeddingModel(path, device)
        self.tokenizer = Tokenizer(path)
        self.batcher = EmbeddingBatcher(self.model, batch_wait_timeout_s=batch_wait_timeout_s)

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def dim(self) -> int:
        return self.model.dim

    async def tokenize(self, inputs: list[str | list[int]]) -> list[list[int]]:
        out = []
        vocab = self.tokenizer.vocab_size
        for i, item in enumerate(inputs):
            ids = await self.tokenizer.encode(item) if isinstance(item, str) else item
            if not ids:
                raise BadRequestError(f"input[{i}] is empty.", param="input")
            if len(ids) > self.model.max_len:
                raise BadRequestError(
                    f"input[{i}] has {len(ids)} tokens; this model accepts at most {self.model.max_len}.",
                    param="input", code="context_length_exceeded")
            bad = next((t for t in ids if t >= vocab), None)
            if bad is not None:
                raise BadRequestError(f"Token id {bad} in input[{i}] is outside the vocabulary [0, {vocab}).",
                                      param="input")
            out.append(ids)
        return out

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.tokenizer.close()
