"""The one place that touches llama-cpp-python internals (they may move on upgrade).

``logits_row`` is tested in tests/test_llama_internals.py against the public
``logits_all=True`` path.
"""

from __future__ import annotations

import llama_cpp
import numpy as np


def is_end_of_generation(llm: llama_cpp.Llama, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def token_text(llm: llama_cpp.Llama, token: int) -> str:
    return llm._model.token_get_text(token)


def logits_row(ctx, index: int, n_vocab: int) -> np.ndarray:
    """Logits of batch position ``index`` after a decode, as a view (no copy)."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, index), shape=(n_vocab,))


def new_parallel_context(llm: llama_cpp.Llama, n_ctx_per_seq: int, n_seq: int, n_batch: int,
                         n_threads: int, flash_attn: bool | None = None, lora=None):
    """A second llama.cpp context on ``llm``'s weights holding ``n_seq`` sequences, each with
    its own ``n_ctx_per_seq`` window (non-unified KV cache), for batched decoding.
    ``flash_attn`` None lets llama.cpp choose; False matches ``Llama()``'s default numerics
    (flash attention on the CPU accumulates in f16: logits move by ~1e-2). ``lora`` (a
    ``weights.Lora``) is applied to this context only."""
    params = context_params(n_ctx_per_seq * n_seq, n_seq, n_batch, n_threads)
    params.kv_unified = False
    if flash_attn is not None:
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    return open_context(llm, params, n_batch, n_seq, lora)


def context_params(n_ctx: int, n_seq: int, n_batch: int, n_threads: int):
    """llama.cpp context parameters for batched work: ``n_ctx`` cells in all for up to
    ``n_seq`` sequences, decodes of up to ``n_batch`` tokens in one ubatch."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.no_perf = True
    return params


def open_context(llm: llama_cpp.Llama, params, n_batch: int, batch_seqs: int, lora=None):
    """A context with ``params`` on ``llm``'s weights (``lora`` applied to it alone) and a
    batch of ``n_batch`` tokens, each in up to ``batch_seqs`` sequences."""
    from clients.llama_cpp.weights import apply_adapter

    from llama_cpp import _internals

    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    if lora is not None:
        apply_adapter(ctx, lora)
    batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=batch_seqs,
                                  verbose=False)
    return ctx, batch


def batch_clear(batch) -> None:
    batch.batch.n_tokens = 0


def batch_add(batch, token: int, pos: int, seq_id: int, logits: bool) -> int:
    """Append one token; returns its index in the batch."""
    b = batch.batch
    k = b.n_tokens
    b.token[k] = token
    b.pos[k] = pos
    b.seq_id[k][0] = seq_id
    b.n_seq_id[k] = 1
    b.logits[k] = logits
    b.n_tokens = k + 1
    return k


def copy_sequence(ctx, src: int, dst: int) -> None:
    """Copy slot ``src``'s KV stream into slot ``dst`` (non-unified cache: llama.cpp copies
    the whole stream's buffers at the start of the next decode and takes ``src``'s cell
    positions now); cut ``dst`` back with ``truncate_sequence`` afterwards."""
    llama_cpp.llama_memory_seq_cp(ctx.memory, src, dst, -1, -1)


def truncate_sequence(ctx, seq_id: int, keep: int) -> None:
    """Drop a slot's KV cells from position ``keep`` on (all of them for keep=0)."""
    llama_cpp.llama_memory_seq_rm(ctx.memory, seq_id, keep, -1)
