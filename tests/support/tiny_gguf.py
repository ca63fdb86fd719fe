"""Tiny llama-architecture GGUF files written by the tests themselves.

Exact-arithmetic tests (proxy-tuning, vocabulary checks) need several models that share
a tokenizer token for token, load in milliseconds and give clearly separated logits;
real checkpoints are too slow and too few. ``write_tiny_gguf`` writes one with the
``gguf`` package: a SentencePiece-style "llama" vocabulary (byte fallback, ``<s>``,
``</s>``, ChatML control tokens, whole-word pieces), random weights from a seed, and a
ChatML chat template so the gateway's llama.cpp chat client can serve it.

The vocabulary depends only on its variant (never on the seed), so models from the same
variant and different seeds agree on every token; ``n_pad`` appends unused trailing rows
(as real checkpoints pad their embedding matrix) and ``vocab="alt"`` gives a different
vocabulary of the same kind for mismatch tests. The same arguments give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# SentencePiece token types, as llama.cpp reads them (tokenizer.ggml.token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_BIAS_CHANNEL = 4.0  # constant residual value that carries the suppression "bias"
_SUPPRESS = 5.0  # suppressed rows' weight on it, in units of logit_std

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = {
    "base": (
        "the a an and or of to in is it you that this what how for with on as are be hello "
        "world answer question assistant user system yes no python code def return print "
        "import class self value true false none list number one two three four five first "
        "last name data file test model token text word good bad please thanks"
    ),
    # Different words, so the two vocabularies disagree early in the shared id range.
    "alt": (
        "zebra quartz the of and to in banana kiwi mango hello world garden river stone "
        "cloud music paper window violet orange yellow purple silver golden winter summer "
        "spring autumn ocean forest desert island valley mountain"
    ),
}


@dataclass(frozen=True)
class TinyVocab:
    """A tokenizer's pieces, scores and types; ``variant`` names the word list."""

    variant: str
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, piece: str) -> int:
        return self.tokens.index(piece)

    @property
    def unk_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def non_text_ids(self) -> tuple[int, ...]:
        """Tokens a sensible answer never holds: bytes, ``<unk>``, ``<s>``, ``<|im_start|>``."""
        return tuple(i for i, t in enumerate(self.types) if t in (UNKNOWN, BYTE)) + (
            self.bos_id, self.im_start_id)

    @property
    def im_start_id(self) -> int:
        return self.id("<|im_start|>")

    @property
    def im_end_id(self) -> int:
        return self.id("<|im_end|>")


def tiny_vocab(variant: str = "base") -> TinyVocab:
    """The vocabulary named ``variant`` ("base" or "alt"); independent of any seed.

    Layout: ``<unk> <s> </s>``, the 256 byte tokens ``<0x00>``..``<0xFF>``, the ChatML
    control tokens, ``▁`` and the printable ASCII characters, then every prefix of
    ``▁word`` and ``word`` for the variant's words (so SentencePiece's pairwise merges
    can reach each whole word). Anything else falls back to bytes. No space prefix is
    added (as in Qwen or Llama 3), so tokenization is a function of the text alone and
    every text round-trips exactly.
    """
    if variant not in _WORDS:
        raise ValueError(f"unknown tiny vocabulary {variant!r}; have {sorted(_WORDS)}")
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [CONTROL, CONTROL]
    pieces = ["▁"] + [chr(c) for c in range(0x21, 0x7F)]
    seen = set(pieces)
    for word in _WORDS[variant].split():
        for start in ("▁", ""):  # after a space, and at the start of a text
            for end in range(1, len(word) + 1):
                piece = start + word[:end]
                if piece not in seen:
                    seen.add(piece)
                    pieces.append(piece)
    n_special = len(tokens)
    tokens += pieces
    types += [NORMAL] * len(pieces)
    # Special and byte tokens score 0 (llama convention); normal pieces score by rank,
    # longer pieces higher, so merges prefer whole words.
    scores = [0.0] * n_special + [float(len(p)) - i * 1e-3 for i, p in enumerate(pieces)]
    return TinyVocab(variant, tuple(tokens), tuple(scores), tuple(types))


@dataclass(frozen=True)
class TinyModel:
    """What ``write_tiny_gguf`` wrote: the file, its tokenizer and its sizes."""

    path: Path
    vocab: TinyVocab
    n_vocab: int  # rows of the embedding/output matrices: len(vocab) + n_pad
    n_pad: int
    seed: int
    suppressed: tuple[int, ...]  # ids whose logits are pushed far down (non-text tokens)

    def __fspath__(self) -> str:
        return str(self.path)


def _pieces_with_padding(vocab: TinyVocab, n_pad: int) -> tuple[list[str], list[float], list[int]]:
    tokens = list(vocab.tokens) + [f"<|pad_{i}|>" for i in range(n_pad)]
    return tokens, list(vocab.scores) + [0.0] * n_pad, list(vocab.types) + [UNUSED] * n_pad


def write_tiny_gguf(
    path: str | Path,
    *,
    seed: int = 0,
    vocab: str | TinyVocab = "base",
    n_pad: int = 0,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int | None = None,
    n_ff: int = 64,
    n_ctx_train: int = 2048,
    logit_std: float = 4.0,
    pad_logit_scale: float = 1.0,
    suppress_non_text: bool = True,
    dtype: str = "f32",
    deltas: dict[str, np.ndarray] | None = None,
) -> TinyModel:
    """Write a tiny llama GGUF to ``path`` and describe it.

    Weights are Gaussian from ``np.random.default_rng(seed)``. The output matrix is scaled
    so raw logits have standard deviation about ``logit_std`` (distinct tokens, a clear
    argmax); the ``n_pad`` padding rows are scaled again by ``pad_logit_scale`` (0 makes
    their logits exactly 0). With ``suppress_non_text`` the byte, ``<unk>``, ``<s>`` and
    ``<|im_start|>`` rows get logits far below the rest, so greedy text is made of whole
    pieces (valid UTF-8, the same as text or as ids); ``</s>`` and ``<|im_end|>`` stay
    ordinary, so generations can end on their own. ``dtype`` is "f32" or "f16" for the
    matrices (norms stay f32, as llama.cpp wants). ``deltas`` maps tensor names
    (``blk.0.attn_q.weight``) to arrays added to those weights after they are drawn: the
    same model with a LoRA adapter merged in.
    """
    import gguf  # test dependency, imported on use

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    voc = tiny_vocab(vocab) if isinstance(vocab, str) else vocab
    n_head_kv = n_head_kv or n_head
    head_dim = n_embd // n_head
    tokens, scores, types = _pieces_with_padding(voc, n_pad)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    wtype = np.float32 if dtype == "f32" else np.float16

    def mat(rows: int, cols: int, std: float) -> np.ndarray:
        # numpy (rows, cols) is ggml {cols, rows}: llama.cpp's {n_in, n_out} layout.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(wtype)

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-{voc.variant}-{seed}")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32"
                         else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(voc.unk_id)
    writer.add_bos_token_id(voc.bos_id)
    writer.add_eos_token_id(voc.eos_id)
    writer.add_eot_token_id(voc.im_end_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    ones = np.ones(n_embd, dtype=np.float32)
    hidden_std = n_embd ** -0.5
    embd = mat(n_vocab, n_embd, 1.0)
    layers = []
    for _ in range(n_layer):
        layers.append({
            "attn_q": mat(n_head * head_dim, n_embd, hidden_std),
            "attn_k": mat(n_head_kv * head_dim, n_embd, hidden_std),
            "attn_v": mat(n_head_kv * head_dim, n_embd, hidden_std),
            "attn_output": mat(n_embd, n_head * head_dim, hidden_std),
            "ffn_gate": mat(n_ff, n_embd, hidden_std),
            "ffn_up": mat(n_ff, n_embd, hidden_std),
            "ffn_down": mat(n_embd, n_ff, n_ff ** -0.5),
        })
    # After the final RMS norm the hidden state has unit RMS, so a row with entries of
    # standard deviation s gives a logit of standard deviation s * sqrt(n_embd).
    out = rng.standard_normal((n_vocab, n_embd), dtype=np.float32) * (logit_std * hidden_std)
    if n_pad:
        out[len(voc):] *= pad_logit_scale
    suppressed = voc.non_text_ids if suppress_non_text else ()
    if suppressed:
        # llama has no biases, so residual channel 0 carries a constant instead: every
        # embedding holds _BIAS_CHANNEL there and no layer writes to it, so after the
        # final norm it is positive at every position; a large negative output weight on
        # it pushes the suppressed rows far below the rest.
        embd[:, 0] = _BIAS_CHANNEL
        for w in layers:
            w["attn_output"][0, :] = 0
            w["ffn_down"][0, :] = 0
        out[:, 0] = 0
        out[list(suppressed), 0] = -_SUPPRESS * logit_std

    deltas = deltas or {}

    def weight(name: str, value: np.ndarray) -> np.ndarray:
        if name not in deltas:
            return value
        return (value.astype(np.float32) + deltas[name]).astype(value.dtype)

    writer.add_tensor("token_embd.weight", embd)
    for i, w in enumerate(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(p + name + ".weight", weight(p + name + ".weight", w[name]))
        writer.add_tensor(p + "ffn_norm.weight", ones)
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            writer.add_tensor(p + name + ".weight", weight(p + name + ".weight", w[name]))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", out.astype(wtype))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyModel(path=path, vocab=voc, n_vocab=n_vocab, n_pad=n_pad, seed=seed,
                     suppressed=tuple(suppressed))
