"""Tiny backbones built from a config, with a byte-level BPE tokenizer trained on the catalogue.

They are random at birth; `e2urec train` teaches them the task. Sized so that a training run on
the synthetic default takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

SPECIAL_TOKENS = ["<pad>", "</s>", "<s>", "<unk>"]  # pad=0 and eos=1 as T5 expects
# Always in the corpus, so the answer and the causal answer cue become whole tokens.
ANSWER_TEXTS = ["Yes.", "No.", " Yes.", " No.", "\nAnswer:", "yes or no"]


def train_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 4096, seq2seq: bool = False
) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Digit runs (stars, years) are split off as their own tokens; elsewhere merges may cross
    # spaces, so the fixed template collapses into a few tokens and the informative ones (titles,
    # stars) are a larger share of a prompt about half as long as word-level BPE makes it.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=12,  # phrases of the template merge; titles and stars stay readable
    )
    tok.train_from_iterator(list(corpus) + ANSWER_TEXTS * 50, trainer)
    # Causal models start with <s>; T5-style encoders end with </s>, as the real ones do.
    single = "$A </s>" if seq2seq else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single,
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
        padding_side="left" if not seq2seq else "right",
    )


def tiny_llama(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0) -> LlamaForCausalLM:
    import torch

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tiny_t5(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0) -> T5ForConditionalGeneration:
    import torch

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=128,
        d_kv=32,
        d_ff=344,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)
