"""A small tokenizer built offline, for the built-in tiny models.

Byte-level BPE with no merges: every string encodes (one token per byte), and the
special tokens a processor needs (image placeholders, turn markers) are added as
single tokens. Nothing is downloaded.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def build_tokenizer(special_tokens: list[str], extra_special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with `special_tokens` appended after the 256 byte tokens.

    `extra_special_tokens` names some of them as tokenizer attributes (InternVL's
    processor reads `tokenizer.start_image_token` and friends).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD] + [t for t in special_tokens if t not in (BOS, EOS, PAD)]
    tok.add_special_tokens(specials)
    kwargs = {}
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = dict(extra_special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, **kwargs
    )
