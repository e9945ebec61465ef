"""Builds the project's models offline and deterministically: a byte-level BPE tokenizer trained on the
Python standard library's sources, and a Llama-architecture model with seeded random weights.

Nothing here touches the network. The weights are random, so the text the model writes is noise; the model
exists so that the server, its tests and its benchmarks run anywhere without a model hub.

    python -m service.model_builder --preset default --out models/default
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)

# ChatML, the format Qwen and many others use; rendered by transformers' apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Preset:
    """Shape of a generated model and of the corpus its tokenizer is trained on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    corpus_bytes: int
    initializer_range: float = 0.02
    # Precision the weights are saved in; bf16 halves the files of the larger presets.
    weights_dtype: str = "float32"


PRESETS: dict[str, Preset] = {
    # The benchmark model of the core issue: ~27M parameters.
    "default": Preset(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        corpus_bytes=8_000_000,
    ),
    # For tests: builds in about a second. The larger init spreads the logits so that greedy decoding
    # has no near-ties and comparisons against HF generate are exact.
    "tiny": Preset(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        corpus_bytes=600_000,
        initializer_range=0.2,
    ),
    # For the GPU benchmark (benchmarks/gpu_decode.py): TinyLlama-1.1B's shape, ~1.1B parameters, bf16 weights.
    "llama-1b": Preset(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        corpus_bytes=8_000_000,
        weights_dtype="bfloat16",
    ),
}


def corpus_files() -> list[Path]:
    """The standard library's own sources, in a fixed order (tests excluded)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        f for f in stdlib.rglob("*.py") if "site-packages" not in f.parts and "test" not in f.parts
    )


def iter_corpus(limit_bytes: int) -> Iterator[str]:
    total = 0
    for path in corpus_files():
        text = path.read_text(encoding="utf-8", errors="ignore")
        yield text
        total += len(text)
        if total >= limit_bytes:
            return


def build_tokenizer(preset: Preset, out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=preset.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_corpus(preset.corpus_bytes), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=preset.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def build_model(preset: Preset, out_dir: Path, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))  # type: ignore[arg-type]
    im_end_id = int(tokenizer.convert_tokens_to_ids(IM_END))  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        initializer_range=preset.initializer_range,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, preset.weights_dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=[eos_id, im_end_id], pad_token_id=eos_id
    )
    model.save_pretrained(out_dir)


def build(preset_name: str, out_dir: Path, seed: int = 0, max_position_embeddings: int | None = None) -> Path:
    """Build the tokenizer and model of `preset_name` into `out_dir`; returns `out_dir`.

    `max_position_embeddings` overrides the preset's context length (for long-prompt benchmarks).
    """
    preset = PRESETS[preset_name]
    if max_position_embeddings is not None:
        preset = dataclasses.replace(preset, max_position_embeddings=max_position_embeddings)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(preset, out_dir)
    build_model(preset, out_dir, seed)
    (out_dir / "hfserve_build.json").write_text(json.dumps(
        {"preset": preset_name, "seed": seed, "max_position_embeddings": preset.max_position_embeddings}))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", type=Path, default=Path("models/default"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="Override the preset's context length.")
    args = parser.parse_args()
    path = build(args.preset, args.out, args.seed, args.max_position_embeddings)
    print(f"built {args.preset} model in {path}")


if __name__ == "__main__":
    main()
