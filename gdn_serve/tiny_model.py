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

Real-shaped variants (`SHAPES`, `gdn-serve tiny-model --shape NAME`): the layer dimensions of a
published Qwen3.5 model, fewer layers, the same tokenizer and peaked logits. Their Gated
DeltaNet layers are the production ones (K = V = 128, 32 value heads and 16 key heads at TP = 1,
one full-attention layer in four), so kernels and engines run at real shapes; they are what the
GPU tests and the engine benchmark load. At 3.5 GB (dense) and 1.0 GB (MoE) they are written on
the machine that uses them, on its GPU when it has one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gdn_serve import paths

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
    # Mixture of experts (Qwen3_5MoeForCausalLM) when num_experts > 0; intermediate_size unused
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    @property
    def moe(self) -> bool:
        return self.num_experts > 0


# The dimensions are transformers 5.19's defaults for each config class, which its docstrings
# name as these checkpoints (Qwen3_5TextConfig: Qwen/Qwen3.5-27B; Qwen3_5MoeTextConfig:
# Qwen/Qwen3.5-35B-A3B); 8 layers instead of 32 / 40 (6 GDN + 2 full attention, the published
# 3 : 1 ratio), 8 experts top-2 instead of 256 top-8 (the model this stack is first meant for is
# the MoE one). Not checked against the published config.json files (no hub here).
_GDN_DIMS = {
    "full_attention_interval": 4,
    "num_attention_heads": 16,
    "head_dim": 256,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "num_hidden_layers": 8,
}
SHAPES: dict[str, TinyModelSpec] = {
    "tiny": TinyModelSpec(),
    "qwen3.5-27b-layers": TinyModelSpec(
        hidden_size=4096, intermediate_size=12288, num_key_value_heads=4, **_GDN_DIMS
    ),
    "qwen3.5-35b-a3b-layers": TinyModelSpec(
        hidden_size=2048,
        intermediate_size=0,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=512,
        shared_expert_intermediate_size=512,
        **_GDN_DIMS,
    ),
}


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


_MOE_FIELDS: tuple[str, ...] = ("num_experts", "num_experts_per_tok", "moe_intermediate_size")
_MOE_FIELDS += ("shared_expert_intermediate_size",)


def build_config(spec: TinyModelSpec, eos_token_id: int, pad_token_id: int) -> Any:
    from transformers import Qwen3_5MoeTextConfig, Qwen3_5TextConfig

    fields = {k: v for k, v in asdict(spec).items() if k != "seed"}
    dropped = ("intermediate_size",) if spec.moe else _MOE_FIELDS
    config_class = Qwen3_5MoeTextConfig if spec.moe else Qwen3_5TextConfig
    config = config_class(
        **{k: v for k, v in fields.items() if k not in dropped},
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen3_5MoeForCausalLM" if spec.moe else "Qwen3_5ForCausalLM"]
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
    basis, ids, row_of, successor = (t.to(embed.device) for t in (basis, ids, row_of, successor))
    with torch.no_grad():
        embed.copy_(basis[row_of] * hidden**0.5)  # RMS 1, as the first norm expects
        head.zero_()
        head[ids[successor]] = basis


def write_tiny_model(out_dir: Path, spec: TinyModelSpec | None = None, device: str = "cpu") -> Path:
    """Write the checkpoint and tokenizer into `out_dir` (replaced if present). `device="cuda"`
    initialises the random weights on the GPU (seconds instead of minutes for the real-shaped
    models; other weights than a CPU-written checkpoint, each deterministic where written)."""
    import torch
    from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM

    spec = spec or TinyModelSpec()
    tokenizer = build_tokenizer()
    config = build_config(
        spec, tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    )
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = (Qwen3_5MoeForCausalLM if spec.moe else Qwen3_5ForCausalLM)(config)
    # Printable ASCII; byte-level BPE spells the space as "Ġ".
    printable = [tokenizer.convert_tokens_to_ids(c) for c in ["Ġ", *map(chr, range(0x21, 0x7F))]]
    peak_logits(model, printable, spec.seed)
    model = model.bfloat16()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="50GB")
    tokenizer.save_pretrained(out_dir)
    marker = {"writer_version": WRITER_VERSION, **asdict(spec)}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    if device != "cpu":
        del model
        torch.cuda.empty_cache()  # the engines that load it next need the memory
    return out_dir


def is_current(out_dir: Path, spec: TinyModelSpec | None = None) -> bool:
    """True when `out_dir` holds a complete tiny model written from `spec` by this writer."""
    marker = out_dir / MARKER
    if not marker.is_file() or not (out_dir / "model.safetensors").is_file():
        return False
    expected = {"writer_version": WRITER_VERSION, **asdict(spec or TinyModelSpec())}
    return bool(json.loads(marker.read_text()) == expected)


def ensure_tiny_model(
    out_dir: Path, spec: TinyModelSpec | None = None, device: str = "cpu"
) -> Path:
    """Write the tiny model unless an identical one is already there."""
    return out_dir if is_current(out_dir, spec) else write_tiny_model(out_dir, spec, device)


def resolve_model(model: str | None) -> str:
    """A local checkpoint path, a hub id (for users with hub access), or the tiny default."""
    if model is None:
        return str(ensure_tiny_model(paths.default_model_dir()))
    local = Path(model).expanduser()
    return str(local.resolve()) if local.exists() else model
