"""The embedded default model: a tiny random-weight Qwen3.5 checkpoint, written offline.

`write_tiny_model()` produces, deterministically from a seed, a bf16 `Qwen3_5ForCausalLM`
checkpoint (Gated DeltaNet `linear_attention` layers mixed with `full_attention` layers, small
hidden size) and a byte-level tokenizer with a ChatML chat template. Nothing is downloaded.

Peaked logits, on purpose. With plain random weights the top two logits are often within bf16
noise of each other, so greedy decoding flips between paths whenever batching changes the
arithmetic, and "same greedy output as plain vLLM" cannot be tested. Here the embedding rows
are orthogonal and the LM head maps each one to a fixed successor token (printable ASCII only,
never a special token, so generation always runs to max_tokens), so the winning logit leads
the rest by a wide margin. Every layer still runs, with random weights at the usual scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Bumped whenever the written files would change for the same seed.
WRITER_VERSION = 1
MARKER = "gdn_serve_tiny_model.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """The shape of the tiny model. Head dims of 64 keep vLLM's CPU kernels on their fast path."""

    seed: int = 0
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4  # three GDN layers, then one full-attention layer
    full_attention_interval: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 64
    linear_value_head_dim: int = 64
    vocab_size: int = 320  # byte alphabet + specials, rounded up to a multiple of 64
    max_position_embeddings: int = 4096


def build_tokenizer() -> Any:
    """A byte-level tokenizer (one token per byte, no merges) with the ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=TinyModelSpec.max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(spec: TinyModelSpec, eos_token_id: int, pad_token_id: int) -> Any:
    from transformers import Qwen3_5TextConfig

    fields = {k: v for k, v in asdict(spec).items() if k != "seed"}
    config = Qwen3_5TextConfig(
        **fields,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen3_5ForCausalLM"]
    config.dtype = "bfloat16"
    return config


def peak_logits(model: Any, printable_ids: list[int], seed: int) -> None:
    """Orthogonal embedding rows for the printable tokens (every other token shares the row of
    a printable one), and an LM head that maps each row to a fixed successor, a permutation of
    the printable tokens. The successor's logit is then about |h| and every other about 0."""
    import torch

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    vocab, hidden = embed.shape
    count = len(printable_ids)
    if count > hidden:
        raise ValueError(f"{count} printable tokens need hidden_size >= {count}")
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(hidden, count, generator=gen)).Q.T  # orthonormal rows
    ids = torch.tensor(printable_ids)
    row_of = torch.randint(count, (vocab,), generator=gen)  # the others borrow a printable row
    row_of[ids] = torch.arange(count)
    successor = torch.randperm(count, generator=gen)  # one cycle structure over printable text
    with torch.no_grad():
        embed.copy_(basis[row_of] * hidden**0.5)  # RMS 1, as the first norm expects
        head.zero_()
        head[ids[successor]] = basis


def write_tiny_model(out_dir: Path, spec: TinyModelSpec | None = None) -> Path:
    """Write the checkpoint and tokenizer into `out_dir` (replaced if present)."""
    import torch
    from transformers import Qwen3_5ForCausalLM

    spec = spec or TinyModelSpec()
    tokenizer = build_tokenizer()
    config = build_config(
        spec, tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    )
    torch.manual_seed(spec.seed)
    model = Qwen3_5ForCausalLM(config)
    # Printable ASCII; byte-level BPE spells the space as "Ġ".
    printable = [tokenizer.convert_tokens_to_ids(c) for c in ["Ġ", *map(chr, range(0x21, 0x7F))]]
    peak_logits(model, printable, spec.seed)
    model = model.bfloat16()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    marker = {"writer_version": WRITER_VERSION, **asdict(spec)}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out_dir


def is_current(out_dir: Path, spec: TinyModelSpec | None = None) -> bool:
    """True when `out_dir` holds a complete tiny model written from `spec` by this writer."""
    marker = out_dir / MARKER
    if not marker.is_file() or not (out_dir / "model.safetensors").is_file():
        return False
    expected = {"writer_version": WRITER_VERSION, **asdict(spec or TinyModelSpec())}
    return bool(json.loads(marker.read_text()) == expected)


def ensure_tiny_model(out_dir: Path, spec: TinyModelSpec | None = None) -> Path:
    """Write the tiny model unless an identical one is already there."""
    return out_dir if is_current(out_dir, spec) else write_tiny_model(out_dir, spec)
