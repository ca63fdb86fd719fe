"""Router checkpoints: one ``.npz`` of plain arrays plus JSON metadata, never pickle.

Metadata names the router kind and the embedder (name and dimension); loading checks
both, so a checkpoint trained on another embedding fails at start-up with a clear
message instead of routing on garbage. An optional ``__calibration__`` array holds
p_strong scores of prompts the scorer was not fitted on (out-of-fold training scores, or
your own traffic's via ``tandem router calibrate --save``): a configured
``cloud_fraction`` becomes a threshold from them without scoring anything at start-up.
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
         extra: dict | None = None, calibration: np.ndarray | None = None) -> None:
    meta = {"format": FORMAT, "kind": scorer.kind, "embedder": embedder, "dim": dim,
            **(extra or {})}
    arrays = {f"a_{k}": np.asarray(v) for k, v in scorer.arrays().items()}
    if calibration is not None:
        arrays["__calibration__"] = np.asarray(calibration, dtype=np.float64)
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 **arrays)


def load(path: str | Path, embedder: str | None = None,
         dim: int | None = None) -> tuple[EmbeddingScorer, dict]:
    """(scorer, metadata); ``meta["calibration_scores"]`` is the stored array or None."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            arrays = {k[2:]: data[k] for k in data.files if k.startswith("a_")}
            calibration = (np.asarray(data["__calibration__"], dtype=np.float64)
                           if "__calibration__" in data.files else None)
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
    if calibration is not None and (calibration.ndim != 1 or not len(calibration)
                                    or not np.all((calibration >= 0) & (calibration <= 1))):
        raise CheckpointError(f"{path}: calibration scores must be a non-empty list in [0, 1]")
    meta["calibration_scores"] = calibration
    return scorer, meta
