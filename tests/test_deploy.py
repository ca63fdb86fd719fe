"""What can be checked of the deployment without a Docker engine: the compose file with
docker-compose itself, the Dockerfile with hadolint, and that every path, port, volume,
config and environment variable they name agrees with the image and the configs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from server.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is required (make test installs Debian's docker-compose)"
    env = {**os.environ, **dict(
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#"))}
    # compose reads .env beside the file; give it the example for the check only.
    env_file = DEPLOY / ".env"
    created = not env_file.exists()
    if created:
        env_file.write_text((DEPLOY / ".env.example").read_text())
    try:
        out = {}
        for profile in ("cpu", "gpu"):
            r = subprocess.run([binary, "-f", str(DEPLOY / "docker-compose.yml"), "--profile",
                                profile, "config"], capture_output=True, text=True, env=env,
                               cwd=DEPLOY)
            assert r.returncode == 0, r.stderr
            assert "ignored" not in r.stderr, r.stderr
            out[profile] = yaml.safe_load(r.stdout)
        return out
    finally:
        if created:
            env_file.unlink()


def _seconds(duration: str) -> float:
    """Compose durations as it prints them: 1h2m3s, 15m, 90s."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", str(duration)))


def _services(compose: dict, profile: str) -> dict:
    return {n: s for n, s in compose[profile]["services"].items()
            if profile in s.get("profiles", [profile])}


def test_profiles_have_the_right_services(compose):
    assert set(_services(compose, "cpu")) == {"tandem-cpu", "cloud-cpu", "prometheus"}
    assert set(_services(compose, "gpu")) == {"tandem-gpu", "vllm", "prometheus"}
    vllm = _services(compose, "gpu")["vllm"]
    assert vllm["ipc"] == "host"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert _seconds(vllm["healthcheck"]["start_period"]) >= 600  # model load takes minutes


def test_mounted_configs_exist_and_are_valid_tandem_configs(compose):
    for profile in ("cpu", "gpu"):
        for name, svc in _services(compose, profile).items():
            if not name.startswith(("tandem", "cloud")):
                continue
            assert svc["command"][:2] == ["--config", "/etc/tandem/tandem.yaml"]
            mounts = {v["target"]: v for v in svc["volumes"]} if isinstance(
                svc["volumes"][0], dict) else {v.split(":")[1]: v for v in svc["volumes"]}
            config_mount = mounts["/etc/tandem/tandem.yaml"]
            source = config_mount["source"] if isinstance(config_mount, dict) \
                else config_mount.split(":")[0]
            config = load_config(Path(source))  # raises with the key path if invalid
            # The model cache volume is where the image keeps models.
            cache = re.search(r"TANDEM_CACHE=(\S+)", DOCKERFILE).group(1)
            assert cache in mounts
            for model in config.models.values():
                if model.backend == "openai":
                    host = urlsplit(model.base_url).hostname
                    assert host in compose[profile]["services"], f"{name}: {host} unknown"
                    if model.api_key_env:
                        assert model.api_key_env in (DEPLOY / ".env.example").read_text()


def test_ports_match_the_image(compose):
    exposed = re.search(r"^EXPOSE (\d+)", DOCKERFILE, re.M).group(1)
    assert '"--port", "8000"' in DOCKERFILE and exposed == "8000"
    for profile in ("cpu", "gpu"):
        gw = _services(compose, profile)[f"tandem-{profile}"]
        assert str(gw["ports"][0]["target"] if isinstance(gw["ports"][0], dict)
                   else gw["ports"][0].split(":")[-1]) == exposed
        assert "/health" in " ".join(gw["healthcheck"]["test"])


def test_prometheus_scrapes_the_services(compose):
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t.split(":")[0] for job in scrape["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]}
    assert targets <= set(compose["gpu"]["services"])


def test_dockerfile_passes_hadolint():
    binary = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(binary), "--config", str(ROOT / ".hadolint.yaml"),
                        str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "AS build" in DOCKERFILE and "AS runtime" in DOCKERFILE
    assert re.search(r"^USER 10001", DOCKERFILE, re.M) and "HEALTHCHECK" in DOCKERFILE


def test_the_image_builds_the_llama_cpp_version_of_pyproject():
    pinned = re.search(r'"llama-cpp-python==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert re.search(rf"^ARG LLAMA_CPP_VERSION={re.escape(pinned.group(1))}$", DOCKERFILE,
                     re.M), "Dockerfile and pyproject.toml pin different llama-cpp-python"
