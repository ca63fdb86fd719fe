"""Typed gateway configuration: one YAML file, validated by pydantic at start-up.

A bad file fails before the server binds a port, with the key path and the reason
(``models.cloud.base_url: field required``), never with a stack trace.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.routing_config import PolicyRouterConfig, RoutingConfig  # noqa: F401 (re-export)

RESERVED_NAMES = frozenset({"tandem"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlamaCppModelConfig(_Strict):
    """A GGUF model run in-process by llama.cpp."""

    backend: Literal["llama_cpp"]
    model: str = Field(description="catalog name, path to a .gguf file, or hf:owner/repo/file.gguf")
    n_ctx: int = Field(4096, ge=256, le=1_048_576)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    parallel: int = Field(8, ge=1, le=64, description="sequences decoded together in one batch")
    seed: int = 0
    chat_template: str | None = Field(None, description="Jinja template overriding the GGUF's")
    max_queue: int = Field(256, ge=1, description="requests allowed to wait; more get 429")
    lora: str | None = Field(
        None, description="LoRA adapter (.gguf, e.g. from `tandem expert train`) applied to "
        "this model; models naming the same GGUF share one copy of its weights")
    lora_scale: float = Field(1.0, ge=-10, le=10, description="strength of the adapter")


class OpenAIModelConfig(_Strict):
    """Any OpenAI-compatible HTTP server: vLLM, OpenAI, llama.cpp's server, another Tandem."""

    backend: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(description="model name sent upstream")
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_connections: int = Field(256, ge=1, description="open connections per pool: one "
                                 "for answers read whole, one for streams")
    n_ctx: int | None = Field(None, ge=1, description="context window, when known")
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per 1M completion tokens")
    continuation: bool = Field(
        False, description="upstream continues a partial answer (vLLM continue_final_message); "
        "lets it take over a stream another model dropped mid-way")

    def api_key(self) -> str | None:
        """The key, read from the environment at call time (never stored in the config)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ProxyTuningModelConfig(_Strict):
    """A large base steered by a small expert at every token:
    ``base + alpha * (expert - anti_expert)`` (Liu et al. 2024). Expert and anti-expert are
    local llama_cpp models; the base is local too or any OpenAI-compatible server with a
    token-id ``/completions`` endpoint that returns logprobs."""

    backend: Literal["proxy_tuning"]
    base: str = Field(description="configured model name (llama_cpp or openai)")
    expert: str = Field(description="configured llama_cpp model name")
    anti_expert: str = Field(description="configured llama_cpp model name")
    alpha: float = Field(1.0, ge=-10, le=10, description="strength of the steering")
    expert_system: str | None = Field(
        None, description="system prompt only the expert sees (an expert made by prompting)")
    base_template: Literal["chat", "plain"] = "chat"
    expert_template: Literal["chat", "plain"] = "chat"
    anti_expert_template: Literal["chat", "plain"] = "chat"
    mode: Literal["reference", "certified", "speculative"] | None = Field(
        None, description="reference: the base scores the whole vocabulary every token; "
        "certified: the base's top-k, proven or rescored; speculative: local drafts, one "
        "base call per draft. Default: reference for a local base, speculative for a remote")
    base_top_k: int = Field(20, ge=1, le=1000, description="logprobs asked of a remote base")
    on_uncertified: Literal["full", "approximate"] = Field(
        "full", description="when the top-k bound cannot prove the choice: rescore the whole "
        "vocabulary, or keep the top-k choice")
    draft_tokens: int = Field(4, ge=1, le=16, description="first draft length (adapts)")
    scoring_api: Literal["vllm", "echo"] = Field(
        "vllm", description="vllm: prompt_logprobs + token ids (vLLM, Tandem); echo: "
        "echo + logprobs (llama-cpp-python's server)")
    n_ctx: int = Field(4096, ge=256, description="tokens per sequence in the scoring contexts")
    parallel: int = Field(2, ge=1, le=16, description="proxy-tuned requests decoded at once")


class GpuProxyTuningModelConfig(_Strict):
    """Proxy-tuning with the three models on one GPU (clients/gpu): Hugging Face Llama
    checkpoints, static KV caches, CUDA graphs, speculative drafting by the expert.
    Needs torch and transformers; nothing imports them unless this backend is configured."""

    backend: Literal["gpu_proxy_tuning"]
    base: str = Field(description="Llama checkpoint directory (config.json + safetensors)")
    expert: str = Field(description="checkpoint directory; same architecture as anti_expert")
    anti_expert: str = Field(description="checkpoint directory")
    alpha: float = Field(1.0, ge=-10, le=10, description="strength of the steering")
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    device: str = Field("cuda", description="torch device; graphs are captured on CUDA only")
    n_ctx: int = Field(2048, ge=256, le=131_072, description="KV cache positions per sequence")
    parallel: int = Field(8, ge=1, le=32, description="sequences decoded together")
    speculative: bool = Field(True, description="expert drafts, the base verifies in one pass")
    max_draft: int = Field(8, ge=1, le=16, description="longest draft (adapts below it)")
    chat_template: str | None = Field(None, description="Jinja template overriding the expert's")
    max_queue: int = Field(256, ge=1, description="requests allowed to wait; more get 429")


ModelConfig = Annotated[
    Union[LlamaCppModelConfig, OpenAIModelConfig, ProxyTuningModelConfig,
          GpuProxyTuningModelConfig],
    Field(discriminator="backend"),
]


class TracingConfig(_Strict):
    """OpenTelemetry spans (server/tracing.py), exported over OTLP/HTTP when enabled."""

    enabled: bool = Field(False, description="export spans to otlp_endpoint")
    otlp_endpoint: str = Field("http://127.0.0.1:4318/v1/traces",
                               description="an OTLP/HTTP traces endpoint (the collector's)")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with each "
                                    "export (e.g. an authorization header for a vendor)")
    service_name: str = "tandem"
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of traces kept")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    metrics: bool = Field(True, description="serve Prometheus metrics on /metrics")
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long running streams may finish")
    access_log: bool = Field(True, description="one JSON line per request (no content)")
    json_logs: bool = True
    max_logprobs: int = Field(
        20, ge=-1, description="most logprobs/prompt_logprobs per position on /v1/completions "
        "(vLLM's --max-logprobs); -1 allows the whole vocabulary")
    tracing: TracingConfig = Field(default_factory=TracingConfig)


class ApiKeyConfig(_Strict):
    """One application's key (stored as its SHA-256; `tandem keys new NAME` makes one)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=list, description="allowed names; empty = all")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens (prompt + completion) per minute")
    budget_usd: float | None = Field(None, ge=0, description="lifetime cloud spend allowed")
    privacy_mode: str | None = Field(None, description="this key's privacy mode "
                                     "(overrides privacy.mode)")
    cloud_fraction: float | None = Field(None, ge=0, le=1, description="this key's share "
                                         "of router-decided requests for the strong model")
    budget_downgrade_at: float | None = Field(
        None, ge=0, le=1, description="past this share of budget_usd, `tandem` answers with "
        "the weak model instead of refusing (overrides routing.budget_downgrade_at)")


class AuthConfig(_Strict):
    keys: list[ApiKeyConfig] = Field(default_factory=list, description="none: gateway is open")
    open_paths: list[str] = Field(default_factory=lambda: ["/health", "/ready", "/metrics"])
    admin_key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="allows POST /admin/reload")


class StateConfig(_Strict):
    sqlite_path: str = "~/.cache/tandem/state.sqlite"
    redis_url: str | None = Field(None, description="share limits and budgets across replicas")


class ResponsesConfig(_Strict):
    """Stored responses (``store``, ``previous_response_id``) of /v1/responses."""

    ttl_s: float = Field(30 * 86_400.0, gt=0, description="how long a stored response "
                         "can be retrieved or continued (OpenAI keeps 30 days)")
    max_in_memory: int = Field(10_000, ge=0, description="responses kept in this process "
                               "when no state store is configured, and those that "
                               "carried private spans (never put in a shared Redis)")


class PrivacyMemoryConfig(_Strict):
    """Sticky privacy (privacy/memory.py): spans once private stay private."""

    enabled: bool = True
    scope: Literal["key", "conversation"] = Field(
        "key", description="key: every later request of the API key; conversation: the "
        "same conversation_id, user, or first user message")
    ttl_s: float = Field(86_400.0, gt=0, description="how long a request's spans are kept")


class PrivacyConfig(_Strict):
    """Private context stays on the device (privacy/, clients/private.py)."""

    mode: str | None = Field(
        None, description="what a request with private spans does: local_only, sketch or "
        "redact (per key: auth.keys[].privacy_mode; per request: the body field 'privacy'). "
        "Unset: local_only when a local model is configured, else redact (placeholders: "
        "a gateway with no local model cannot answer privately, and a 403 for every name "
        "would make it useless)")
    detectors: list[str] = Field(
        default_factory=lambda: ["marked", "overlap", "pii", "names"],
        description="marked, overlap, pii (structured data and secrets), names (people, "
                    "organisations, places by capitalisation), ner (spaCy, opt-in)")
    detector_options: dict[str, dict] = Field(default_factory=dict)
    egress_on_failure: Literal["block", "local"] = Field(
        "block", description="when detection fails or the guard blocks: refuse (403) or "
        "answer with the local model")
    local_model: str | None = Field(None, description="default: the first llama_cpp model")
    sketch_max_tokens: int = Field(256, ge=16, le=4096)
    audit_ttl_s: float = Field(3600.0, gt=0)
    audit_max_requests: int = Field(10_000, ge=1)
    audit_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    memory: PrivacyMemoryConfig = Field(default_factory=PrivacyMemoryConfig)

    @model_validator(mode="after")
    def _known(self) -> "PrivacyConfig":
        from clients.private import MODES
        from privacy.detectors import known_detectors

        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"privacy.mode: '{self.mode}' is not one of "
                             f"{', '.join(sorted(MODES))}")
        known = known_detectors()
        for name in [*self.detectors, *self.detector_options]:
            if name not in known:
                raise ValueError(f"privacy.detectors: unknown detector '{name}' (known: "
                                 f"{', '.join(known)})")
        return self


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    models: dict[str, ModelConfig]
    routing: RoutingConfig
    auth: AuthConfig = Field(default_factory=AuthConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)

    @model_validator(mode="after")
    def _names_resolve(self) -> "GatewayConfig":
        if not self.models:
            raise ValueError("models: at least one model is required")
        for name in self.models:
            if name in RESERVED_NAMES or name.startswith("router-"):
                raise ValueError(f"models.{name}: the name is reserved for routing")
        known = set(self.models)
        if self.routing.default not in known:
            raise ValueError(
                f"routing.default: '{self.routing.default}' is not a configured model "
                f"(known: {', '.join(sorted(known))})"
            )
        for alias, target in self.routing.aliases.items():
            if target not in known:
                raise ValueError(f"routing.aliases.{alias}: '{target}' is not a configured model")
            if alias in RESERVED_NAMES or alias.startswith("router-"):
                raise ValueError(f"routing.aliases.{alias}: the name is reserved for routing")
        self.routing.check(known)
        for i, key in enumerate(self.auth.keys):
            if key.cloud_fraction is not None and not self.routing.router:
                raise ValueError(f"auth.keys[{i}].cloud_fraction needs a routing.router")
            if key.budget_downgrade_at is not None and key.budget_usd is None:
                raise ValueError(f"auth.keys[{i}].budget_downgrade_at needs budget_usd")
            if key.budget_downgrade_at is not None and not self.routing.weak:
                raise ValueError(f"auth.keys[{i}].budget_downgrade_at needs routing.weak")
        seen: set[str] = set()
        for i, key in enumerate(self.auth.keys):
            if key.name in seen or key.key_sha256 in seen:
                raise ValueError(f"auth.keys[{i}]: duplicate name or key")
            seen |= {key.name, key.key_sha256}
        for name, m in self.models.items():
            if m.backend == "proxy_tuning":
                _check_proxy_parts(name, m, self.models)
        p = self.privacy.local_model
        if p is not None and (p not in known or self.models[p].backend != "llama_cpp"):
            raise ValueError(f"privacy.local_model: '{p}' is not a configured llama_cpp model")
        from clients.private import MODES

        for i, key in enumerate(self.auth.keys):
            if key.privacy_mode is not None and key.privacy_mode not in MODES:
                raise ValueError(f"auth.keys[{i}].privacy_mode: '{key.privacy_mode}' is not "
                                 f"one of {', '.join(sorted(MODES))}")
        for i, name in enumerate(self.routing.fallback):
            if name not in known:
                raise ValueError(f"routing.fallback[{i}]: '{name}' is not a configured model")
        return self


def _check_proxy_parts(name: str, m: ProxyTuningModelConfig, models: dict) -> None:
    for role, allowed in (("base", ("llama_cpp", "openai")), ("expert", ("llama_cpp",)),
                          ("anti_expert", ("llama_cpp",))):
        part = getattr(m, role)
        if part not in models:
            raise ValueError(f"models.{name}.{role}: '{part}' is not a configured model")
        if models[part].backend not in allowed:
            raise ValueError(f"models.{name}.{role}: '{part}' is a {models[part].backend} "
                             f"model; a proxy-tuning {role} must be {' or '.join(allowed)}")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the key and the reason."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        # Discriminated unions add the tag to the path (models.cloud.openai.base_url).
        lines.append(f"  {path or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>") -> GatewayConfig:
    """Validate already-parsed YAML/JSON data."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None) -> GatewayConfig:
    """Load a YAML file, or the embedded default when ``path`` is None."""
    if path is None:
        text = resources.files("server").joinpath("configs/default.yaml").read_text()
        source = "embedded default"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such configuration file")
        text, source = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    return parse_config(data, source)


def embedded_config_path(name: str) -> Path:
    """Path of one of the configurations shipped inside the package."""
    return Path(str(resources.files("server").joinpath(f"configs/{name}.yaml")))
