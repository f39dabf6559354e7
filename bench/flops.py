"""Floating-point operations of the work the benchmarks time, counted from a model's shape.

One multiply-add is 2 FLOPs. A forward pass of ``T`` tokens through a decoder costs
``2 * P_linear`` per token (every weight matrix of every layer once), plus attention's two
``T x T`` products, plus the LM head at every position whose logits are computed. A backward pass
costs the forward again for the gradients flowing to the inputs, and once more for the gradients
of the *trainable* weights: a frozen base under a LoRA pays ~2x forward in all, full fine-tuning
~3x. Embedding lookups, norms and activations are left out (memory-bound, < 2% of FLOPs here).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about a decoder (or encoder-decoder) model."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0
    mlp_matrices: int = 3  # gated MLP (Llama); T5 v1.0 has 2
    encoder_decoder: bool = False  # T5: half the layers encode the prompt, half decode 2 tokens

    @property
    def attn_dim(self) -> int:
        return self.head_dim * self.heads if self.head_dim else self.hidden

    @property
    def linear_params_per_layer(self) -> int:
        kv = (self.head_dim or self.hidden // self.heads) * self.kv_heads
        attention = self.hidden * self.attn_dim * 2 + self.hidden * kv * 2  # q, o + k, v
        mlp = self.mlp_matrices * self.hidden * self.intermediate
        return attention + mlp

    @property
    def linear_params(self) -> int:
        return self.layers * self.linear_params_per_layer

    @classmethod
    def of(cls, model, name: str = "") -> ModelShape:
        """Read the shape of a loaded Hugging Face model's config."""
        c = model.config
        if getattr(c, "is_encoder_decoder", False):  # T5 names its fields differently
            return cls(
                name=name or c.model_type,
                layers=c.num_layers + c.num_decoder_layers,
                hidden=c.d_model,
                intermediate=c.d_ff,
                heads=c.num_heads,
                kv_heads=c.num_heads,
                vocab=c.vocab_size,
                head_dim=c.d_kv,
                mlp_matrices=3 if "gated" in getattr(c, "feed_forward_proj", "") else 2,
                encoder_decoder=True,
            )
        return cls(
            name=name or c.model_type,
            layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            intermediate=c.intermediate_size,
            heads=c.num_attention_heads,
            kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            vocab=c.vocab_size,
            head_dim=getattr(c, "head_dim", 0) or c.hidden_size // c.num_attention_heads,
        )


# Shapes of the models the projection names (from their published configs).
T5_BASE = ModelShape(
    "t5-base", 24, 768, 3072, 12, 12, 32128, 64, mlp_matrices=2, encoder_decoder=True
)
LLAMA_7B = ModelShape("llama-2-7b", 32, 4096, 11008, 32, 32, 32000, 128)
SMOLLM2_135M = ModelShape("smollm2-135m", 30, 576, 1536, 9, 3, 49152, 64)


def forward_flops(shape: ModelShape, tokens: int, logit_positions: int = 2) -> float:
    """One sequence of ``tokens`` tokens forward, LM head at ``logit_positions`` positions."""
    if shape.encoder_decoder:
        # the encoder reads the prompt; the decoder runs over the 2-token answer with
        # cross-attention to it (half the layers each)
        half = shape.layers // 2
        per_layer = shape.linear_params_per_layer
        encoder = 2 * per_layer * half * tokens + 4 * half * tokens * tokens * shape.attn_dim
        decoder = 2 * per_layer * half * logit_positions * 4 / 3  # + cross-attention q, o
        cross = 4 * half * logit_positions * tokens * shape.attn_dim
        return encoder + decoder + cross + 2 * shape.vocab * shape.hidden * logit_positions
    body = 2 * shape.linear_params * tokens
    # QK^T and AV over a causal mask: each token attends to (tokens + 1) / 2 keys on average
    attention = 2 * 2 * shape.layers * tokens * (tokens + 1) / 2 * shape.attn_dim
    head = 2 * shape.vocab * shape.hidden * logit_positions
    return body + attention + head


def train_flops(
    shape: ModelShape, tokens: int, logit_positions: int = 2, *, full: bool = False
) -> float:
    """Forward and backward of one sequence: 2x forward under a LoRA (frozen weights), 3x when
    every weight is trained. The LoRA's own matrices (r << hidden) are neglected."""
    return forward_flops(shape, tokens, logit_positions) * (3 if full else 2)


def prefix_reuse_flops(
    shape: ModelShape, prefix_tokens: int, suffix_tokens: int, candidates: int
) -> float:
    """Scoring ``candidates`` items for one user when the user's prefix is computed once and its
    key/value cache shared: the prefix once, then each suffix attending to prefix + itself."""
    if shape.encoder_decoder:  # no shared prefix for an encoder: every prompt is read whole
        return candidates * forward_flops(shape, prefix_tokens + suffix_tokens, 1)
    prefix = forward_flops(shape, prefix_tokens, 0)
    per_suffix = (
        2 * shape.linear_params * suffix_tokens
        + 4
        * shape.layers
        * suffix_tokens
        * (prefix_tokens + (suffix_tokens + 1) / 2)
        * shape.attn_dim
        + 2 * shape.vocab * shape.hidden
    )
    return prefix + candidates * per_suffix
