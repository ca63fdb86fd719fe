"""One copy of each GGUF's weights per process, and LoRA adapters on top of them.

Several configured models may name the same GGUF file: a proxy-tuned model's expert is
the small model with a fine-tuned adapter, its anti-expert the same file without one.
llama.cpp keeps weights (``llama_model``) apart from contexts (``llama_context``), and an
adapter is applied per context, so both roles can run on one loaded copy: every client
takes the file from this registry and sets its adapter on the contexts it creates
(``apply_adapter``). Loads and frees are reference-counted and take turns under one lock
(llama-cpp-python redirects file descriptors 1 and 2 while it loads).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


class AdapterError(RuntimeError):
    """A LoRA file llama.cpp would not load; the message names the file and the model."""


@dataclass
class _Weights:
    llm: Any  # llama_cpp.Llama: weights, vocabulary, metadata (its own context is tiny)
    users: int = 0
    adapters: dict[str, Any] = field(default_factory=dict)  # lora path -> adapter pointer


_LOADED: dict[str, _Weights] = {}


def acquire(model_path: str, n_threads: int, seed: int):
    """The loaded ``Llama`` for ``model_path``: loaded on first use, shared afterwards."""
    from llama_cpp import Llama

    key = str(Path(model_path).resolve())
    with _LOCK:
        entry = _LOADED.get(key)
        if entry is None:
            llm = Llama(model_path=model_path, n_ctx=64, n_batch=64, n_threads=n_threads,
                        seed=seed, verbose=False)
            entry = _LOADED[key] = _Weights(llm)
        entry.users += 1
        return entry.llm


def release(llm) -> None:
    """Give back what ``acquire`` returned; the last user frees weights and adapters."""
    import llama_cpp

    with _LOCK:
        for key, entry in list(_LOADED.items()):
            if entry.llm is llm:
                entry.users -= 1
                if entry.users <= 0:
                    del _LOADED[key]
                    for adapter in entry.adapters.values():
                        llama_cpp.llama_adapter_lora_free(adapter)
                    llm.close()
                return


def is_loaded(model_path: str) -> bool:
    """Whether this process holds ``model_path``'s weights (tests read it)."""
    with _LOCK:
        return str(Path(model_path).resolve()) in _LOADED


def adapter(llm, lora_path: str, scale: float = 1.0) -> "Lora":
    """The LoRA adapter ``lora_path`` on ``llm``'s weights (loaded once per pair)."""
    import llama_cpp

    path = Path(lora_path)
    if not path.is_file():
        raise AdapterError(f"LoRA adapter {lora_path} does not exist")
    key = str(path.resolve())
    with _LOCK:
        entry = next((e for e in _LOADED.values() if e.llm is llm), None)
        if entry is None:
            raise AdapterError("the model is not loaded through clients.llama_cpp.weights")
        if key not in entry.adapters:
            pointer = llama_cpp.llama_adapter_lora_init(llm._model.model, key.encode())
            if not pointer:
                raise AdapterError(
                    f"llama.cpp refused LoRA adapter {lora_path} for {llm.model_path}: it "
                    "must be a GGUF adapter (general.type 'adapter') made for this "
                    "architecture, with tensors shaped like the model's")
            entry.adapters[key] = pointer
        return Lora(entry.adapters[key], scale)


@dataclass(frozen=True)
class Lora:
    """An adapter loaded on a model's weights, and the scale to apply it with."""

    pointer: Any
    scale: float = 1.0


def apply_adapter(ctx, lora: Lora | None) -> None:
    """Set ``lora`` (or no adapter) on a llama.cpp context."""
    import llama_cpp

    if lora is None:
        code = llama_cpp.llama_set_adapters_lora(ctx.ctx, None, 0, None)
    else:
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora.pointer)
        scales = (ctypes.c_float * 1)(lora.scale)
        code = llama_cpp.llama_set_adapters_lora(ctx.ctx, adapters, 1, scales)
    if code != 0:
        raise AdapterError(f"llama.cpp could not set the LoRA adapter (code {code})")
