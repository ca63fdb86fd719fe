"""The Kubernetes manifests (deploy/kubernetes/), checked offline: every object against
the Kubernetes API schemas (kubernetes-validate, strict: an unknown field is an error),
the ConfigMap's tandem.yaml as a Tandem config, the probes on /ready and /health, the
Secret holding what the pods read from it, and every vLLM flag (compose and Kubernetes)
against the flags vLLM's own argument parsers define, read from its sdist (not
imported)."""

from __future__ import annotations

import ast
import hashlib
import io
import re
import tarfile
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from server.config import load_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"
VLLM_VERSION = "0.33.0"
VLLM_SDIST = f"vllm-{VLLM_VERSION}.tar.gz"
VLLM_SHA256 = "f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112"
VLLM_PATH = "f7/25/aa5684e9c59d6fc75f78926b7f15e8d9adc7de2d9e6e7575b80776ad8169"
VLLM_URLS = (f"https://files.pythonhosted.org/packages/{VLLM_PATH}/{VLLM_SDIST}",
             f"https://pypi.org/packages/packages/{VLLM_PATH}/{VLLM_SDIST}")


def objects() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == kind}


def test_every_manifest_is_valid_against_the_api_schemas():
    objs = objects()
    assert {o["kind"] for o in objs} >= {"Deployment", "Service", "ConfigMap", "Secret",
                                        "HorizontalPodAutoscaler", "Namespace"}
    for o in objs:
        kubernetes_validate.validate(o, KUBERNETES, strict=True)  # raises with the path


def test_a_broken_manifest_is_refused():
    bad = by_kind("Deployment")["tandem"]
    bad = {**bad, "spec": {**bad["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_the_configmap_is_a_valid_tandem_config_on_shared_redis(tmp_path):
    path = tmp_path / "tandem.yaml"
    path.write_text(by_kind("ConfigMap")["tandem-config"]["data"]["tandem.yaml"])
    config = load_config(path)  # raises with the key path if invalid
    assert config.state.redis_url == "redis://redis:6379/0"
    assert config.models["cloud"].base_url == "http://vllm:8000/v1"
    secret = by_kind("Secret")["tandem-keys"]["stringData"]
    assert config.models["cloud"].api_key_env in secret
    services = by_kind("Service")
    assert {"redis", "vllm", "tandem"} <= set(services)


def test_gateway_replicas_have_readiness_and_liveness_probes():
    pod = by_kind("Deployment")["tandem"]["spec"]
    assert pod["replicas"] >= 2
    container = pod["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["args"] == ["--config", "/etc/tandem/tandem.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/tandem"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert mounts["models"] == re.search(r"TANDEM_CACHE=(\S+)", dockerfile).group(1)
    for ref in container["envFrom"]:
        assert ref["secretRef"]["name"] in by_kind("Secret")


@pytest.fixture(scope="module")
def vllm_flags() -> set[str]:
    """Every flag vLLM's parsers define: ``add_argument("--x", ...)`` literals and the
    fields of its frontend-argument dataclasses (turned into ``--x-y`` by vLLM)."""
    cache = Path.home() / ".cache" / "tandem" / "deploy" / VLLM_SDIST
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        for url in VLLM_URLS:
            try:
                r = httpx.get(url, timeout=300, follow_redirects=True)
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == VLLM_SHA256:
                cache.with_suffix(".part").write_bytes(r.content)
                cache.with_suffix(".part").rename(cache)  # only a checked file is kept
                break
    assert cache.exists(), f"could not download {VLLM_SDIST} from {VLLM_URLS}"
    data = cache.read_bytes()
    assert hashlib.sha256(data).hexdigest() == VLLM_SHA256, f"{cache}: wrong SHA-256"
    flags: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if not (member.name.startswith(f"vllm-{VLLM_VERSION}/vllm/")
                    and member.name.endswith(".py")):
                continue
            tree = ast.parse(tar.extractfile(member).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == \
                        "add_argument":
                    flags |= {a.value for a in node.args if isinstance(a, ast.Constant)
                              and isinstance(a.value, str) and a.value.startswith("--")}
                if isinstance(node, ast.ClassDef) and node.name.endswith("FrontendArgs"):
                    flags |= {"--" + s.target.id.replace("_", "-") for s in node.body
                              if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    assert {"--model", "--tensor-parallel-size", "--port"} <= flags  # the reader works
    return flags


def _flags(args: list[str]) -> list[str]:
    return [a.split("=")[0] for a in args if a.startswith("--")]


def test_vllm_command_lines_use_only_flags_vllm_defines(vllm_flags):
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    vllm = compose["services"]["vllm"]
    k8s = by_kind("Deployment")["vllm"]["spec"]["template"]["spec"]["containers"][0]
    for image, args in ((vllm["image"], vllm["command"]), (k8s["image"], k8s["args"])):
        assert image == f"vllm/vllm-openai:v{VLLM_VERSION}", image  # the version checked
        unknown = [f for f in _flags(args) if f not in vllm_flags]
        assert not unknown, f"{image}: vLLM {VLLM_VERSION} has no {unknown}"
    assert "--tensor-parallel-size" in _flags(k8s["args"])
    assert "--definitely-not-a-vllm-flag" not in vllm_flags
