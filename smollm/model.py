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


def count_parameters(model: ModelConfig) -> int:
    """Exact parameter count (tied embeddings counted once), on the meta device: no memory."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        module = LlamaForCausalLM(llama_config(model))
    return sum(p.numel() for p in module.parameters())
