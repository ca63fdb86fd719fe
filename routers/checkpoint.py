"""Router checkpoints: one ``.npz`` of plain arrays plus JSON metadata, never pickle.

Metadata names the router kind and the embedder (name and dimension); loading checks
both, so a checkpoint trained on another embedding fails at start-up with a clear
message instead of routing on garbage.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from routers.learned import SCORERS, EmbeddingScorer

FORMAT = "tandem-router/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and why."""


def save(path: str | Path, scorer: EmbeddingScorer, embedder: str, dim: int,
         extra: dict | None = None) -> None:
    meta = {"format": FORMAT, "kind": scorer.kind, "embedder": embedder, "dim": dim,
            **(extra or {})}
    arrays = {f"a_{k}": np.asarray(v) for k, v in scorer.arrays().items()}
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 **arrays)


def load(path: str | Path, embedder: str | None = None,
         dim: int | None = None) -> tuple[EmbeddingScorer, dict]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            arrays = {k[2:]: data[k] for k in data.files if k.startswith("a_")}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such router checkpoint") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a Tandem router checkpoint ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    kind = meta.get("kind")
    if kind not in SCORERS:
        raise CheckpointError(f"{path}: unknown router kind {kind!r}")
    if embedder is not None and meta.get("embedder") != embedder:
        raise CheckpointError(f"{path}: trained on embedder {meta.get('embedder')!r}, "
                              f"the gateway uses {embedder!r}; retrain or change embedder")
    if dim is not None and meta.get("dim") != dim:
        raise CheckpointError(f"{path}: embedding dimension {meta.get('dim')}, expected {dim}")
    try:
        scorer = SCORERS[kind].from_arrays(arrays)
        probe = np.zeros(meta["dim"], dtype=np.float32)
        probe[0] = 1.0
        value = float(np.asarray(scorer.score(probe)))
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise CheckpointError(f"{path}: arrays do not fit a {kind} router ({err})") from None
    if not 0.0 <= value <= 1.0:
        raise CheckpointError(f"{path}: scores outside [0, 1]")
    return scorer, meta
