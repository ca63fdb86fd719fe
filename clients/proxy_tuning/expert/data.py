"""Chat examples for fine-tuning an expert: read, checked line by line, tokenized.

One JSON object per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``, at
least one assistant turn. Every assistant turn is trained on (its content and the
template's end-of-turn tokens); everything else is context only. Tokens are those the
served model will see: the conversation is rendered with the model's own chat template
(``ChatRenderer``), and an assistant turn's tokens are where the rendering of the
conversation up to it grows past the rendering of what came before it plus the
generation prompt. A bad line stops everything with its line number and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ROLES = ("system", "user", "assistant", "tool")
IGNORE = -100  # label of a token that is not trained on (torch's cross-entropy default)


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and line."""


class ChatRenderer(Protocol):
    def render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        """The conversation as the model's chat template renders it, as token ids."""


@dataclass(frozen=True)
class Example:
    line: int
    tokens: list[int]
    labels: list[int]  # the token to predict at each position, or IGNORE

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def read_conversations(path: str | Path) -> list[tuple[int, list[dict]]]:
    """(line number, messages) for every non-blank line, each checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not JSON ({err.msg}); each line must be one "
                                'object like {"messages": [...]}') from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DataError(f'{where}: expected an object with a non-empty "messages" '
                                "list")
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ROLES:
                    raise DataError(f"{where}: messages[{i}] needs a role, one of "
                                    f"{', '.join(ROLES)}")
                if not isinstance(m.get("content"), str):
                    raise DataError(f"{where}: messages[{i}].content must be a string")
            if not any(m["role"] == "assistant" for m in messages):
                raise DataError(f"{where}: no assistant turn: nothing to learn from")
            rows.append((number, [{"role": m["role"], "content": m["content"]}
                                  for m in messages]))
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def tokenize(path: str | Path, renderer: ChatRenderer, max_tokens: int) -> list[Example]:
    """Every conversation in ``path`` as tokens with assistant-only labels."""
    examples = []
    for number, messages in read_conversations(path):
        where = f"{path}:{number}"
        tokens = renderer.render(messages, False)
        if len(tokens) > max_tokens:
            raise DataError(f"{where}: {len(tokens)} tokens, longer than the context of "
                            f"{max_tokens}; shorten it or raise --n-ctx")
        trained = [False] * len(tokens)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = renderer.render(messages[:i], True) if i else []
            end = renderer.render(messages[: i + 1], False)
            if end[: len(start)] != start or tokens[: len(end)] != end:
                raise DataError(f"{where}: the chat template does not render this "
                                "conversation turn by turn (a turn changes what came before)")
            for j in range(len(start), len(end)):
                trained[j] = True
        # position j predicts token j + 1
        labels = [tokens[j + 1] if trained[j + 1] else IGNORE for j in range(len(tokens) - 1)]
        examples.append(Example(number, tokens[:-1], labels))
    return examples
