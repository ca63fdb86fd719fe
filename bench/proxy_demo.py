"""Does a house coding style transfer by proxy? A demonstration on real models.

Base: Qwen2.5-Coder-1.5B-Instruct, never told the style. Anti-expert: the 0.5B as is.
Expert: the same 0.5B with a system prompt that states the house style (an expert need
not be a fine-tune to show the mechanism). The style is checked with ``ast``: every
function in the answer's code has type hints on all parameters and the return, and a
docstring. Reported for the base alone, the expert alone and the proxy-tuned model on
the same prompts (greedy), plus whether the code still parses.

    .venv/bin/python bench/proxy_demo.py [--prompts 12] [--max-tokens 220] [--alpha 1.0]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
import time

from common import emit_json, machine, print_table  # noqa: I001

from server.config import parse_config
from server.runtime import Runtime

HOUSE_STYLE = ("House style: every Python function has type hints on every parameter and "
               "on the return value, and starts with a one-line docstring.")
TASKS = [
    "reverses the words in a sentence", "returns the factorial of n",
    "checks whether a number is prime", "merges two dictionaries",
    "computes the average of a list of numbers", "removes duplicates from a list keeping "
    "order", "counts vowels in a string", "converts Celsius to Fahrenheit",
    "returns the largest element of a list", "capitalizes every word in a string",
    "computes the greatest common divisor of two integers", "checks if two strings are "
    "anagrams", "returns the n-th Fibonacci number", "sums the digits of an integer",
    "transposes a matrix given as a list of lists", "finds the index of a value in a "
    "sorted list with binary search",
]


def code_of(answer: str) -> str:
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", answer, re.S)
    if blocks:
        return "\n".join(blocks)
    return answer.split("```")[1] if answer.count("```") == 1 else answer


def style(answer: str) -> tuple[bool, bool, bool]:
    """(code parses, every function fully type-hinted, every function has a docstring)."""
    try:
        tree = ast.parse(code_of(answer))
    except SyntaxError:
        return False, False, False
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    if not funcs:
        return True, False, False
    hinted = all(f.returns is not None and all(a.annotation is not None for a in f.args.args
                                               if a.arg not in ("self", "cls"))
                 for f in funcs)
    documented = all(ast.get_docstring(f) for f in funcs)
    return True, hinted, documented


def config(alpha: float) -> dict:
    small = {"backend": "llama_cpp", "model": "qwen2.5-coder-0.5b-instruct", "n_ctx": 1024,
             "parallel": 1}
    return {"models": {
        "small": small,
        "large": {**small, "model": "qwen2.5-coder-1.5b-instruct"},
        "proxy": {"backend": "proxy_tuning", "base": "large", "expert": "small",
                  "anti_expert": "small", "expert_system": HOUSE_STYLE, "alpha": alpha,
                  "n_ctx": 1024},
    }, "routing": {"default": "small"}}


async def main(args) -> None:
    rt = Runtime(parse_config(config(args.alpha)), None, None)
    await rt.start()
    await rt.wait_loaded(600)
    variants = {
        "base alone (1.5B)": ("large", False),
        "expert alone (0.5B + style prompt)": ("small", True),
        "proxy-tuned (1.5B steered)": ("proxy", False),
    }
    scores: dict[str, list[tuple[bool, bool, bool]]] = {v: [] for v in variants}
    seconds = {v: 0.0 for v in variants}
    try:
        for task in TASKS[: args.prompts]:
            user = {"role": "user", "content": f"Write a Python function that {task}."}
            for label, (model, with_style) in variants.items():
                messages = ([{"role": "system", "content": HOUSE_STYLE}] if with_style
                            else []) + [user]
                t0 = time.perf_counter()
                r = await rt.clients[model].chat({"messages": messages, "temperature": 0,
                                                  "max_tokens": args.max_tokens})
                seconds[label] += time.perf_counter() - t0
                scores[label].append(style(r["choices"][0]["message"]["content"]))
    finally:
        await rt.close()
    n = args.prompts
    rows, figures = [], {}
    for label, s in scores.items():
        parses = sum(x[0] for x in s) / n
        hinted = sum(x[1] for x in s) / n
        documented = sum(x[2] for x in s) / n
        both = sum(x[1] and x[2] for x in s) / n
        rows.append([label, parses, hinted, documented, both, seconds[label] / n])
        figures[label.split(" (")[0].replace(" ", "_")] = {
            "parses": parses, "hinted": hinted, "documented": documented, "style": both}
    print(f"machine: {machine()}; {n} prompts, greedy, max_tokens {args.max_tokens}, "
          f"alpha {args.alpha}")
    print_table(["variant", "code parses", "type-hinted", "docstring", "full style",
                 "s/answer"], rows)
    emit_json({"bench": "proxy_demo", "prompts": n, "alpha": args.alpha, **figures})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=220)
    parser.add_argument("--alpha", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
