"""Builds a ready engine from configuration: tokenizer, model runner, and the AsyncEngine around them."""

from __future__ import annotations

from service.config import EngineConfig
from service.engine.async_engine import AsyncEngine
from service.engine.model_runner import ModelRunner
from service.engine.tokenizer import Tokenizer


def build_engine(config: EngineConfig) -> tuple[AsyncEngine, Tokenizer]:
    tokenizer = Tokenizer(
        config.model.tokenizer or config.model.model,
        chat_template_path=config.model.chat_template,
        offload_chars=config.offload_tokenization_chars,
    )
    runner = ModelRunner(config.model, config.cache, config.scheduler, tokenizer.eos_token_ids)
    return AsyncEngine(config, runner, tokenizer, tokenizer.eos_token_ids), tokenizer
