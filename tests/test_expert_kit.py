"""``tandem expert train`` on a tiny model written here: two LoRA steps through
transformers + peft, the adapter exported to GGUF, loaded by llama.cpp, and its logits
checked against torch's; resuming gives the very same adapter; bad data is refused with
the line that is wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.support.tiny_gguf import write_tiny_gguf

torch = pytest.importorskip("torch", reason="the expert extra (torch) is installed by make test")

EXAMPLES = [
    [{"role": "user", "content": "hello world what is the answer"},
     {"role": "assistant", "content": "yes the answer is one"}],
    [{"role": "system", "content": "you are an assistant"},
     {"role": "user", "content": "what is python code"},
     {"role": "assistant", "content": "python is code"}],
    [{"role": "user", "content": "is it true or false"},
     {"role": "assistant", "content": "it is true"},
     {"role": "user", "content": "and this"},
     {"role": "assistant", "content": "false"}],
]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    return str(path)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("expert")
    model = write_tiny_gguf(d / "tiny.gguf", seed=7, n_embd=64, n_head=4, n_head_kv=2,
                            n_ff=96)
    return {"dir": d, "model": model, "data": _write(d / "train.jsonl", EXAMPLES)}


def _train(kit, out: str, steps: int, **extra):
    from clients.proxy_tuning.expert.train import TrainOptions, train

    return train(TrainOptions(data=kit["data"], model=str(kit["model"].path), out=out,
                              max_steps=steps, rank=4, lr=0.05, batch_size=2, seed=3,
                              save_every=1, device="cpu", **extra), progress=False)


def _torch_logits(kit, peft_dir, tokens: list[int]) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = kit["model"].path
    base = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].numpy()


def _llama_logits(path, tokens: list[int], lora: str | None = None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), lora_path=lora, n_ctx=256, n_threads=1,
                logits_all=True, verbose=False)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)])
    llm.close()
    return out


def test_two_steps_export_to_gguf_and_llama_cpp_matches_torch(kit):
    out = kit["dir"] / "run"
    report = _train(kit, str(out), 2)
    assert report.steps == 2 and report.examples == 3 and report.trained_tokens > 0
    assert (out / "adapter.gguf").is_file() and (out / "train.json").is_file()
    from llama_cpp import Llama

    vocab = Llama(model_path=str(kit["model"].path), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(b"hello world what is the answer yes the answer is one")
    assert len(tokens) > 6
    expected = _torch_logits(kit, out / "peft", tokens)
    got = _llama_logits(kit["model"].path, tokens, str(out / "adapter.gguf"))
    plain = _llama_logits(kit["model"].path, tokens)
    moved = float(np.abs(plain - expected).max())
    off = float(np.abs(got - expected).max())
    print(f"adapter moved logits by {moved:.4f}; llama.cpp vs torch {off:.5f}")
    # float32 in two engines: the plain models already differ by ~5e-3 at logit std 4
    assert moved > 0.5 and off < 0.02, (moved, off)


def test_resume_continues_to_the_same_adapter(kit):
    straight = kit["dir"] / "straight"
    _train(kit, str(straight), 3)
    resumed = kit["dir"] / "resumed"
    _train(kit, str(resumed), 1)
    report = _train(kit, str(resumed), 3)
    assert report.resumed_from == 1 and report.steps == 3
    a = (straight / "adapter.gguf").read_bytes()
    b = (resumed / "adapter.gguf").read_bytes()
    assert a == b


@pytest.mark.parametrize("lines, says", [
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
      '"content": "hello"}]}', "not json at all"], "train.jsonl:2: not JSON"),
    (['{"messages": [{"role": "user", "content": "hello world"}]}'],
     "train.jsonl:1: no assistant turn"),
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
      '"content": "' + "yes " * 400 + '"}]}'], "longer than the context of 256"),
    (['{"messages": [{"role": "robot", "content": "hi"}]}'], "messages[0] needs a role"),
    (['{"prompt": "hi"}'], 'non-empty "messages"'),
])
def test_bad_data_is_a_clear_error_naming_the_line(kit, tmp_path, lines, says):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "expert", "train", "--data", str(data),
         "--model", str(kit["model"].path), "--out", str(tmp_path / "out"),
         "--n-ctx", "256", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
