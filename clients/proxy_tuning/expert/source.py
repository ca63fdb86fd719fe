"""The small model to fine-tune: a GGUF file (catalog name or path) or a Hugging Face
directory, opened for torch and with the chat renderer that matches how it is served.

A GGUF is read by transformers' GGUF loader (weights dequantized to float32) and
rendered by llama.cpp itself, with the file's own chat template, so the expert trains
on exactly the tokens Tandem's llama_cpp backend will feed it. A Hugging Face directory
is rendered with its tokenizer's chat template. Torch and transformers are imported here
only when a model is opened (``pip install 'tandem[expert]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.proxy_tuning.expert.data import DataError


class LlamaCppRenderer:
    """The GGUF's chat template and tokenizer, through llama.cpp (vocabulary only)."""

    def __init__(self, gguf_path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise DataError(f"{gguf_path} has no chat template to render examples with")
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        names = {"eos_token": self.llm._model.token_get_text(eos) if eos != -1 else "",
                 "bos_token": self.llm._model.token_get_text(bos) if bos != -1 else ""}
        self._formatters = {flag: Jinja2ChatFormatter(template=template,
                                                      add_generation_prompt=flag, **names)
                            for flag in (True, False)}

    def render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        text = self._formatters[add_generation_prompt](messages=messages).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


class TokenizerRenderer:
    """A Hugging Face tokenizer's chat template."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Source:
    """An opened model: torch module, renderer, and what the GGUF export needs."""

    name: str  # as given on the command line (goes into the printed YAML)
    model: Any  # transformers PreTrainedModel, float32
    renderer: Any
    arch: str  # llama.cpp architecture name (general.architecture)
    gguf_path: Path | None


def resolve_model(name: str) -> Path:
    """A catalog name, a .gguf path or a Hugging Face directory, as a local path."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    from clients.model_store import CATALOG, resolve

    if name in CATALOG:
        return resolve(name)
    raise DataError(f"model {name!r} is neither a file, a directory nor a catalog name "
                    f"({', '.join(CATALOG)})")


def gguf_architecture(path: Path) -> str:
    import gguf

    field = gguf.GGUFReader(str(path)).get_field("general.architecture")
    if field is None:
        raise DataError(f"{path} has no general.architecture")
    return field.contents()


def open_source(name: str, device: str):
    """Load ``name`` for training on ``device`` (float32 weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    if path.is_file():
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32)
        return Source(name, model.to(device), LlamaCppRenderer(path),
                      gguf_architecture(path), path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return Source(name, model.to(device), TokenizerRenderer(tokenizer),
                  model.config.model_type, None)
