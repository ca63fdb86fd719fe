"""Embeddings from an in-process GGUF model (``POST /v1/embeddings`` on a llama_cpp model).

A llama.cpp context of its own, with embeddings on, on the weights the chat client
already loaded (weights.py): made by the first embedding request, reused by every later
one (and by every configured model on the same file, adapter and context size), and
owned by one worker thread, so requests take turns on it while the event loop only
awaits and the chat engine's context keeps decoding beside it.

Each input is mean-pooled over its tokens' final hidden states (summed here, chunk by
chunk, so an input may be as long as the context, ``n_ctx``; longer is a 400, never
truncated) and L2-normalised, as OpenAI's vectors are. ``dimensions`` keeps the first d
components and normalises again (Matryoshka style). Short inputs share a decode, one
sequence each. This suits causal (generative) GGUFs, the only kind a llama_cpp model
can be here (it needs a chat template).

The functions register for ``LlamaCppClient`` with ``register_embedder``, so the chat
client's file stays about chat.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clients.base import ChatBody, register_embedder
from clients.errors import InvalidRequest, Overloaded, UpstreamError
from clients.llama_cpp import weights
from clients.llama_cpp.client import LlamaCppClient
from clients.llama_cpp.internals import batch_add, batch_clear, context_params, open_context

MAX_SEQS = 64  # inputs per window (llama.cpp allows up to 256 sequences in one context)
EMBED_BATCH = 256  # tokens per decode: llama.cpp reserves 256 x vocabulary floats (150 MB)

_LOCK = threading.Lock()
_SHARED: dict[tuple, "LlamaEmbedder"] = {}  # (weights, adapter, n_ctx) -> its embedder


def _embedding_context(llm, n_ctx: int, n_batch: int, n_threads: int, lora=None):
    """A context on ``llm``'s weights that returns each token's final hidden state: one
    window of ``n_ctx`` cells shared by up to ``MAX_SEQS`` sequences."""
    import llama_cpp

    params = context_params(n_ctx, MAX_SEQS, n_batch, n_threads)
    params.kv_unified = True
    params.embeddings = True
    params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE  # pooled here, see _embed_now
    return open_context(llm, params, n_batch, 1, lora)


class _Cancelled(Exception):
    """The caller left: the rest of the inputs are not decoded."""


class LlamaEmbedder:
    """Mean-pooled, normalised embeddings from one model; thread-safe, async outside."""

    def __init__(self, llm, n_ctx: int, n_threads: int, lora=None) -> None:
        self.llm = llm
        self.n_ctx = n_ctx
        self.n_batch = min(EMBED_BATCH, n_ctx)
        self.n_threads = n_threads
        self.lora = lora
        self.n_embd = llm.n_embd()
        self.n_vocab = llm.n_vocab()
        self.waiting = 0  # requests queued or running on the worker
        self._ctx = self._batch = None  # made by the first job, in the worker
        self._closed = False
        # One thread owns the context: requests take turns, in order.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="llama-embed")

    async def embed(self, inputs: list[str] | list[list[int]]) -> tuple[np.ndarray, int]:
        """(one unit vector per input, as rows; tokens embedded). A caller that goes away
        stops the work at the next decode."""
        if self._closed:
            raise self._unloaded()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self._worker, self._embed_now, inputs, cancel)
        except RuntimeError:  # the worker was shut down a moment ago
            raise self._unloaded() from None
        self.waiting += 1
        try:
            return await job
        except (InvalidRequest, UpstreamError):
            raise
        except Exception as err:  # a failed decode: the caller gets an OpenAI error
            raise UpstreamError(f"local embedding failed: {type(err).__name__}: {err}",
                                status=500, retryable=False) from None
        finally:
            cancel.set()  # no-op when done; stops a request whose caller left
            self.waiting -= 1

    # -- the worker thread -------------------------------------------------------------
    def _tokens(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Token ids of every input, checked against the vocabulary and the window."""
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                # Text is text: special-token spellings in it are not control tokens.
                tokens = self.llm.tokenize(item.encode("utf-8"), add_bos=True, special=False)
            else:
                bad = next((t for t in item if t >= self.n_vocab), None)
                if bad is not None:
                    raise InvalidRequest(f"Invalid request: 'input': token id {bad} is outside "
                                         f"the vocabulary (0..{self.n_vocab - 1})",
                                         param="input")
                tokens = list(item)
            if len(tokens) > self.n_ctx:
                where = "input" if len(inputs) == 1 else f"input[{i}]"
                raise InvalidRequest(
                    f"Invalid request: '{where}' is {len(tokens)} tokens; this model embeds "
                    f"at most {self.n_ctx} tokens per input (its context). Shorten or split "
                    "it: inputs are never truncated.", param="input",
                    code="context_length_exceeded")
            out.append(tokens)
        return out

    def _groups(self, token_lists: list[list[int]]):
        """(first, end) runs of inputs that fit in the window together."""
        start = 0
        while start < len(token_lists):
            end, total = start, 0
            while (end < len(token_lists) and end - start < MAX_SEQS
                   and total + len(token_lists[end]) <= self.n_ctx):
                total += len(token_lists[end])
                end += 1
            yield start, end
            start = end

    def _embed_now(self, inputs, cancel: threading.Event) -> tuple[np.ndarray, int]:
        """Pins the weights for the job (a client closed meanwhile cannot free them under
        a decode: the last release, maybe this one, frees them and this context after)."""
        token_lists = self._tokens(inputs)
        path = self.llm.model_path
        if self._closed or not weights.is_loaded(path):
            raise self._unloaded()
        pinned = weights.acquire(path, self.n_threads, 0)
        try:
            if pinned is not self.llm or self._closed:  # freed and loaded anew meanwhile
                raise self._unloaded()
            vectors = self._pooled(token_lists, cancel)
        finally:
            weights.release(pinned)
        return vectors, sum(len(t) for t in token_lists)

    def _pooled(self, token_lists: list[list[int]], cancel: threading.Event) -> np.ndarray:
        """Mean pooling by hand: llama.cpp pools only a sequence that fits in one
        micro-batch, and its output rows for a micro-batch of n tokens take n x vocabulary
        floats (the graph computes logits even in embedding mode: 2.5 GB at 4,096), so
        long inputs go through in ``n_batch`` chunks and their hidden states are summed."""
        import llama_cpp

        if self._ctx is None:
            self._ctx, self._batch = _embedding_context(
                self.llm, self.n_ctx, self.n_batch, self.n_threads, self.lora)
        sums = np.zeros((len(token_lists), self.n_embd), dtype=np.float64)
        for start, end in self._groups(token_lists):
            self._ctx.kv_cache_clear()
            items = [(s, pos, token) for s in range(start, end)
                     for pos, token in enumerate(token_lists[s])]
            for lo in range(0, len(items), self.n_batch):
                if cancel.is_set():  # the caller left
                    raise _Cancelled()
                chunk = items[lo: lo + self.n_batch]
                batch_clear(self._batch)
                for s, pos, token in chunk:
                    # every token is an output: its hidden state joins the mean
                    batch_add(self._batch, token, pos, s - start, True)
                self._ctx.decode(self._batch)
                rows = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(self._ctx.ctx),
                                             shape=(len(chunk), self.n_embd))
                seqs = np.fromiter((s for s, _, _ in chunk), dtype=np.intp, count=len(chunk))
                np.add.at(sums, seqs, rows)
        self._ctx.kv_cache_clear()
        counts = np.array([len(t) for t in token_lists], dtype=np.float64)[:, None]
        return normalise((sums / counts).astype(np.float32))

    @staticmethod
    def _unloaded() -> UpstreamError:
        return UpstreamError("the local model was unloaded (reload or shutdown)", status=503,
                             code="model_not_loaded")

    def forget(self) -> None:
        """The weights are being freed (this context with them): refuse further work."""
        self._closed = True
        self._worker.shutdown(wait=False)


def normalise(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def embedder_for(llm, lora, n_ctx: int, n_threads: int) -> LlamaEmbedder:
    """The shared embedder of these weights, adapter and window: made on first use, gone
    with the weights (llama-cpp-python closes a model's contexts with it)."""
    key = (id(llm), lora, n_ctx)  # a Lora is its adapter pointer and scale
    with _LOCK:
        embedder = _SHARED.get(key)
        if embedder is None:
            embedder = _SHARED[key] = LlamaEmbedder(llm, n_ctx, n_threads, lora)

            def forget() -> None:
                with _LOCK:
                    _SHARED.pop(key, None)
                embedder.forget()

            llm._model._exit_stack.callback(forget)
        return embedder


def _inputs(value) -> list[str] | list[list[int]]:
    """The validated ``input`` as a list of texts or of token-id lists."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [value]
    return value


@register_embedder(LlamaCppClient)
async def embed(client: LlamaCppClient, body: ChatBody) -> dict:
    """An embeddings response with one unit vector (a float32 array) per input."""
    model = await client.admit()  # loaded (requests during the load wait for it)
    cfg = client.config
    embedder = embedder_for(model.llm, model.lora, cfg.n_ctx, client.n_threads)
    dims = body.get("dimensions")
    if dims is not None and not 1 <= dims <= embedder.n_embd:
        raise InvalidRequest(f"Invalid request: 'dimensions' must be between 1 and "
                             f"{embedder.n_embd} for model '{client.name}'",
                             param="dimensions")
    if embedder.waiting >= cfg.max_queue:
        raise Overloaded(f"local model '{client.name}' has {embedder.waiting} embedding "
                         "requests waiting; retry later", headers={"retry-after": "1"})
    vectors, tokens = await embedder.embed(_inputs(body["input"]))
    if dims is not None and dims < embedder.n_embd:
        vectors = normalise(np.ascontiguousarray(vectors[:, :dims]))
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(vectors)],
            "model": client.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
