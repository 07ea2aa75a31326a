"""Build `transformers.LlamaForCausalLM` models from `ModelConfig` shapes.

>>> from smollm.model import llama_config, count_parameters
"""

from __future__ import annotations

from smollm.config import ModelConfig


def llama_config(model: ModelConfig):
    """The `LlamaConfig` of a shape (SwiGLU, RoPE, RMSNorm, optionally tied embeddings)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_kv_heads,
        max_position_embeddings=model.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
        rms_norm_eps=model.rms_norm_eps,
        initializer_range=model.init_std,
        tie_word_embeddings=model.tie_embeddings,
        hidden_act="silu",
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_model(model: ModelConfig, *, seed: int, device: str = "cpu"):
    """A freshly initialised model; the same seed gives the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return LlamaForCausalLM(llama_config(model))


def parameter_count(model: ModelConfig) -> int:
    """Exact parameter count of the shape, by formula (no torch import: `smollm plan` uses it).

    Llama has no biases: attention q/o are d x d, k/v are d x (kv_heads * head_dim); the
    SwiGLU MLP is three d x ffn matrices; two RMSNorm vectors per layer and a final one; the
    embedding, plus an LM head unless tied. `count_parameters` checks it against transformers.
    """
    d, head_dim = model.hidden_size, model.hidden_size // model.num_heads
    attention = 2 * d * d + 2 * d * model.num_kv_heads * head_dim
    layer = attention + 3 * d * model.intermediate_size + 2 * d
    embeddings = model.vocab_size * d * (1 if model.tie_embeddings else 2)
    return model.num_layers * layer + d + embeddings


def count_parameters(model: ModelConfig) -> int:
    """Exact parameter count (tied embeddings counted once), on the meta device: no memory."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        module = LlamaForCausalLM(llama_config(model))
    return sum(p.numel() for p in module.parameters())
