"""The ``tandem`` command line: serve, serve-stack, config check, models, router, expert,
keys."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from server.config import ConfigError, embedded_config_path, load_config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    from server.observe import configure_logging

    config = load_config(args.config)
    configure_logging(args.log_level, config.server.json_logs, config.server.access_log)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    config.server.host, config.server.port = host, port
    app = create_app(config, args.config)
    print(f"tandem: serving {', '.join(config.models)} on http://{host}:{port}/v1",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=config.server.shutdown_timeout_s)
    return 0


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _serve_stack(args: argparse.Namespace) -> int:
    """The embedded default: a cloud stand-in process, then the gateway in front of it."""
    cloud_cmd = [sys.executable, "-m", "server.cli", "serve",
                 "--config", str(embedded_config_path("cloud_standin")),
                 "--host", "127.0.0.1", "--port", str(args.cloud_port),
                 "--log-level", args.log_level]
    env = {**os.environ}
    cloud = subprocess.Popen(cloud_cmd, env=env)
    try:
        print(f"tandem: cloud stand-in (Qwen2.5-Coder-1.5B) starting on port {args.cloud_port}",
              file=sys.stderr)
        if not _wait_ready(f"http://127.0.0.1:{args.cloud_port}/ready", cloud, 600):
            print("tandem: the cloud stand-in did not become ready; the gateway starts anyway "
                  "and falls back to the local model", file=sys.stderr)
        config = load_config(args.config)
        if args.config is None:
            config.models["cloud"].base_url = f"http://127.0.0.1:{args.cloud_port}/v1"
        import uvicorn

        from server.app import create_app
        from server.observe import configure_logging

        configure_logging(args.log_level, config.server.json_logs, config.server.access_log)
        app = create_app(config, args.config)
        print(f"tandem: gateway on http://{args.host}:{args.port}/v1 "
              f"(models: tandem, {', '.join(config.models)})", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    access_log=False,
                    timeout_graceful_shutdown=config.server.shutdown_timeout_s)
    finally:
        cloud.send_signal(signal.SIGTERM)
        try:
            cloud.wait(10)
        except subprocess.TimeoutExpired:
            cloud.kill()
    return 0


def _config_check(args: argparse.Namespace) -> int:
    """Everything a start-up checks short of loading models: the schema, cross-references,
    and the router checkpoints (loaded and matched to the embedder)."""
    from routers.policy import Policy

    config = load_config(args.file)
    try:
        Policy.from_config(config)
    except ValueError as err:
        raise ConfigError(f"{args.file}: routing: {err}") from None
    r = config.routing
    router = ("no router" if r.router is None else f"router {r.router.kind} at "
              + (f"cloud_fraction {r.router.cloud_fraction:g}" if r.router.cloud_fraction
                 is not None else f"threshold {r.router.threshold:g}"))
    print(f"{args.file}: OK ({len(config.models)} models: {', '.join(config.models)}; "
          f"default {r.default}; {router}; {len(r.rules)} rules; learning "
          f"{'on' if r.learning.enabled else 'off'})")
    return 0


def _models_pull(args: argparse.Namespace) -> int:
    from clients.model_store import resolve

    for name in args.names:
        print(resolve(name))
    return 0


def _models_list(_: argparse.Namespace) -> int:
    from clients.model_store import CATALOG, cache_dir

    for name, model in sorted(CATALOG.items()):
        present = (cache_dir() / model.filename).is_file()
        print(f"{name:32s} {model.size / 1e6:8.0f} MB  {'cached' if present else '-'}")
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    """A fresh key for the caller, and the hashed entry for the config (key never stored)."""
    import secrets

    from server.auth import hash_key

    key = "sk-tandem-" + secrets.token_urlsafe(32)
    print(f"# give this key to '{args.name}' (it is not stored anywhere):\n#   {key}")
    print("# add this entry under auth.keys in the config:")
    print(f"- {{name: {args.name}, key_sha256: {hash_key(key)}}}")
    return 0


def _expert_train(args: argparse.Namespace) -> int:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        print("tandem: expert train needs torch, transformers and peft: "
              "pip install 'tandem[expert]'", file=sys.stderr)
        return 2
    from clients.proxy_tuning.expert.train import TrainOptions, proxy_yaml, train

    opts = TrainOptions(data=args.data, model=args.model, out=args.out,
                        max_steps=args.max_steps, epochs=args.epochs, rank=args.rank,
                        alpha=args.alpha, lr=args.lr, batch_size=args.batch_size,
                        n_ctx=args.n_ctx, seed=args.seed, save_every=args.save_every,
                        device=args.device)
    report = train(opts)
    print(f"trained {report.steps} steps on {report.examples} examples in "
          f"{report.seconds:.0f} s ({report.tokens_per_s:.0f} tokens/s, {report.device}); "
          f"adapter: {report.adapter}", file=sys.stderr)
    print(proxy_yaml(opts, report.adapter))
    return 0


def _router(args: argparse.Namespace) -> int:
    import json

    from routers import tools

    if args.router_command == "prompts":
        from pathlib import Path

        from clients.model_store import cache_dir
        from routers import datasets

        rows = datasets.build(cache_dir().parent / "datasets", args.seed)
        datasets.write(rows, Path(args.out))
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["type"]] = counts.get(row["type"], 0) + 1
        result = {"prompts": len(rows), "types": counts, "out": args.out}
    elif args.router_command == "label":
        import asyncio
        from pathlib import Path

        from routers import label as labeling

        if args.prompts == "humaneval":
            from clients.model_store import cache_dir

            rows = labeling.humaneval_rows(cache_dir().parent / "datasets")
        else:
            rows = tools.read_jsonl(args.prompts)
            for i, row in enumerate(rows):
                row.setdefault("id", str(i))
        if args.limit:
            rows = rows[: args.limit]
        n = asyncio.run(labeling.label(rows, Path(args.out), args.base_url, args.weak,
                                       args.strong, args.grader, args.judge, args.max_tokens,
                                       args.concurrency, os.environ.get("TANDEM_API_KEY")))
        result = {"labelled": n, "out": args.out}
    elif args.router_command == "train":
        result = tools.train(args.kind, args.labels, args.out, args.embedder, args.holdout)
    elif args.router_command == "eval":
        from routers import report

        result, curves = tools.evaluate(args.ckpt, args.labels)
        print("\n".join(report.table(curves)))
        if args.plot and report.draw(curves, args.plot, f"{result['kind']} router, "
                                     f"{result['labels']} (n={result['n']})"):
            result["plot"] = args.plot
        elif args.plot:
            print("# no PNG: matplotlib is not installed (pip install 'tandem-gateway[plot]')")
    else:
        t = tools.calibrate(args.ckpt, args.prompts, args.cloud_fraction, args.save)
        print(f"routing.router.threshold: {t:.4f}  # sends ~{args.cloud_fraction:.0%} to the "
              "strong model on these prompts")
        result = {"threshold": round(t, 6), "cloud_fraction": args.cloud_fraction}
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:>12}: {value:.4f}")
    print(json.dumps(result, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from routers.graders import GRADERS

    parser = argparse.ArgumentParser(prog="tandem", description="SLM-LLM collaboration gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=os.environ.get("TANDEM_CONFIG"),
                       help="YAML configuration (default: $TANDEM_CONFIG, else the embedded one)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    stack = sub.add_parser("serve-stack", help="gateway + local cloud stand-in (make serve)")
    stack.add_argument("--config")
    stack.add_argument("--host", default="127.0.0.1")
    stack.add_argument("--port", type=int, default=8000)
    stack.add_argument("--cloud-port", type=int, default=8001)
    stack.add_argument("--log-level", default="info")
    stack.set_defaults(func=_serve_stack)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=_config_check)

    models = sub.add_parser("models", help="model files")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="fetch and verify models")
    pull.add_argument("names", nargs="+")
    pull.set_defaults(func=_models_pull)
    lst = models_sub.add_parser("list", help="the catalog and what is cached")
    lst.set_defaults(func=_models_list)
    router = sub.add_parser("router", help="train, calibrate and evaluate routers")
    rsub = router.add_subparsers(dest="router_command", required=True)
    lb = rsub.add_parser("label", help="answer with weak and strong models, grade both")
    lb.add_argument("--prompts", required=True, help="JSONL file, or 'humaneval'")
    lb.add_argument("--grader", choices=["judge", *sorted(GRADERS)],
                    help="one grader for every prompt (default: each row's own 'grader')")
    lb.add_argument("--out", required=True, help="JSONL; a rerun resumes")
    lb.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    lb.add_argument("--weak", default="local")
    lb.add_argument("--strong", default="cloud")
    lb.add_argument("--judge", help="model that grades (judge grader; default: strong)")
    lb.add_argument("--max-tokens", type=int, default=512,
                    help="for rows without their own 'max_tokens'")
    lb.add_argument("--concurrency", type=int, default=4)
    lb.add_argument("--limit", type=int)
    pr = rsub.add_parser("prompts", help="write the broad, checkable prompt set (PyPI data)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--seed", type=int, default=0)
    tr = rsub.add_parser("train", help="train a router on a label file")
    tr.add_argument("--kind", required=True, choices=["mf", "knn", "classifier"])
    tr.add_argument("--labels", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--embedder", default="hashing-4096")
    tr.add_argument("--holdout", type=float, default=0.2,
                    help="fraction kept out of training and evaluated")
    ev = rsub.add_parser("eval", help="APGR, CPT(50%%), CPT(80%%) on a label file")
    ev.add_argument("--ckpt", help="default: the shipped default checkpoint")
    ev.add_argument("--labels", help="default: the held-out split the checkpoint never saw")
    ev.add_argument("--plot", default="router-eval.png",
                    help="PNG of quality vs %% cloud calls ('' for none)")
    ca = rsub.add_parser("calibrate", help="threshold for a share of cloud calls")
    ca.add_argument("--ckpt", required=True)
    ca.add_argument("--prompts", required=True)
    ca.add_argument("--cloud-fraction", type=float, required=True)
    ca.add_argument("--save", action="store_true",
                    help="store these prompts' scores in the checkpoint: a configured "
                    "routing.router.cloud_fraction then follows them")
    for p in (pr, lb, tr, ev, ca):
        p.set_defaults(func=_router)

    expert = sub.add_parser("expert", help="make a proxy-tuning expert")
    esub = expert.add_subparsers(dest="expert_command", required=True)
    et = esub.add_parser("train", help="LoRA fine-tuning of a small model on chat examples")
    et.add_argument("--data", required=True, help='JSONL, one {"messages": [...]} per line')
    et.add_argument("--model", required=True,
                    help="catalog name, .gguf path or Hugging Face directory")
    et.add_argument("--out", required=True, help="directory for the adapter and checkpoint")
    et.add_argument("--max-steps", type=int, default=None, help="stop after N steps")
    et.add_argument("--epochs", type=float, default=1.0)
    et.add_argument("--rank", type=int, default=8)
    et.add_argument("--alpha", type=float, default=None, help="LoRA alpha (2 * rank)")
    et.add_argument("--lr", type=float, default=1e-3)
    et.add_argument("--batch-size", type=int, default=4)
    et.add_argument("--n-ctx", type=int, default=2048, help="longest example, in tokens")
    et.add_argument("--seed", type=int, default=0)
    et.add_argument("--save-every", type=int, default=25, help="checkpoint every N steps")
    et.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    et.set_defaults(func=_expert_train)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="make a key and its hashed config entry")
    new.add_argument("name")
    new.set_defaults(func=_keys_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clients.model_store import ModelFetchError

    try:
        return args.func(args)
    except (ConfigError, ModelFetchError, ValueError, FileNotFoundError) as err:
        print(f"tandem: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
