"""What proxy-tuning on tiny models must compute, worked out with plain llama-cpp-python
(``logits_all``), and the gateway configuration the proxy tests share."""

from __future__ import annotations

import numpy as np

from clients.proxy_tuning import fusion
from clients.scoring import log_softmax
from tests.support.tiny_gguf import write_tiny_gguf


def write_tiny_set(d) -> dict:
    """The base (wider, padded), expert, anti-expert and an other-vocabulary model."""
    return {
        "base": write_tiny_gguf(d / "base.gguf", seed=3, n_embd=64, n_pad=8),
        "expert": write_tiny_gguf(d / "expert.gguf", seed=1),
        "anti": write_tiny_gguf(d / "anti.gguf", seed=2),
        "alt": write_tiny_gguf(d / "alt.gguf", seed=4, vocab="alt"),
    }


ALPHA = 0.7
EXPERT_SYSTEM = "You are an expert."
QUESTION = "hello world what is the answer"


def tiny_config(tiny, proxies: dict, extra_models: dict | None = None) -> dict:
    local = {"backend": "llama_cpp", "n_ctx": 512, "parallel": 2, "n_threads": 1}
    return {
        "models": {
            "base": {**local, "model": str(tiny["base"].path)},
            "expert": {**local, "model": str(tiny["expert"].path)},
            "anti": {**local, "model": str(tiny["anti"].path)},
            **(extra_models or {}),
            **{name: {"backend": "proxy_tuning", "expert": "expert", "anti_expert": "anti",
                      "alpha": ALPHA, "expert_system": EXPERT_SYSTEM, "n_ctx": 512, **p}
               for name, p in proxies.items()},
        },
        "routing": {"default": "expert"},
    }


def chatml(messages: list[dict]) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


class Independent:
    """Plain llama-cpp-python with ``logits_all``: the numbers the gateway must match."""

    def __init__(self, tiny) -> None:
        from llama_cpp import Llama

        self.llms = {role: Llama(model_path=str(tiny[role].path), n_ctx=512, n_threads=1,
                                 logits_all=True, verbose=False)
                     for role in ("base", "expert", "anti")}
        user = [{"role": "user", "content": QUESTION}]
        expert = [{"role": "system", "content": EXPERT_SYSTEM}, *user]
        tok = self.llms["expert"]
        self.prompts = {
            "base": tok.tokenize(chatml(user).encode(), add_bos=False, special=True),
            "expert": tok.tokenize(chatml(expert).encode(), add_bos=False, special=True),
            "anti": tok.tokenize(chatml(user).encode(), add_bos=False, special=True),
        }

    def row(self, role: str, generated: list[int]) -> np.ndarray:
        llm = self.llms[role]
        llm.reset()
        llm.eval(self.prompts[role] + generated)
        return log_softmax(np.array(llm.scores[llm.n_tokens - 1]))

    def fused(self, generated: list[int]) -> np.ndarray:
        return fusion.fused_full(self.row("base", generated), self.row("expert", generated),
                                 self.row("anti", generated), ALPHA)

    def greedy(self, n: int) -> tuple[list[int], str]:
        """Tokens until end of generation or ``n``, and the finish reason."""
        import llama_cpp

        out: list[int] = []
        vocab = self.llms["expert"]._model.vocab
        while len(out) < n:
            tok = int(np.argmax(self.fused(out)))
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                return out, "stop"
            out.append(tok)
        return out, "length"

    def text(self, tokens: list[int]) -> str:
        return self.llms["expert"].detokenize(tokens).decode("utf-8")
