"""LoRA adapters as GGUF files, in the layout llama.cpp's adapter loader reads.

One file per adapter: ``general.type = "adapter"``, the base model's
``general.architecture``, ``adapter.type = "lora"`` and ``adapter.lora.alpha``; for
each adapted weight ``blk.N.attn_q.weight`` two tensors ``….lora_a`` (numpy shape
(rank, n_in)) and ``….lora_b`` (n_out, rank), the shapes peft stores ``lora_A`` and
``lora_B`` in. llama.cpp adds ``scale * alpha / rank * B @ A`` to the weight, as peft's
``lora_alpha / r`` does. Module names are Hugging Face's (``model.layers.0.self_attn.
q_proj``), mapped to llama.cpp's by the ``gguf`` package's own tensor-name table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ExportError(ValueError):
    """An adapter that cannot be written for llama.cpp (the message says why)."""


def _arch(name: str):
    import gguf

    for arch, arch_name in gguf.MODEL_ARCH_NAMES.items():
        if arch_name == name:
            return arch
    raise ExportError(f"llama.cpp has no architecture named {name!r}")


def gguf_tensor_name(arch: str, n_layers: int, module: str) -> str:
    """llama.cpp's name for a Hugging Face linear module (``blk.0.attn_q``)."""
    import gguf

    mapped = gguf.get_tensor_name_map(_arch(arch), n_layers).get_name(module)
    if mapped is None:
        raise ExportError(f"module {module!r} has no llama.cpp tensor in architecture {arch}")
    return mapped


def write_lora_gguf(path: str | Path, arch: str, n_layers: int,
                    pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float,
                    name: str = "tandem-expert") -> Path:
    """Write ``pairs`` (module name -> (A, B)) as a llama.cpp LoRA adapter."""
    import gguf

    if not pairs:
        raise ExportError("the adapter has no LoRA tensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for module in sorted(pairs):
        a, b = (np.ascontiguousarray(m, dtype=np.float32) for m in pairs[module])
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ExportError(f"{module}: lora_A {a.shape} and lora_B {b.shape} do not "
                              "share a rank")
        base = gguf_tensor_name(arch, n_layers, module) + ".weight"
        writer.add_tensor(base + ".lora_a", a)
        writer.add_tensor(base + ".lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
