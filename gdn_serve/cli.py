"""`gdn-serve`: the command line of the serving runtime.

gdn-serve run          serve a model locally (Ray Serve + vLLM on CPU), loopback only
gdn-serve tiny-model   write the embedded default model into the cache folder
gdn-serve backends     which GDN decode kernel this machine would use, and why
gdn-serve bench        GDN decode kernel benchmark (GPU)
gdn-serve bench-engine a CUDA vLLM engine with and without our plugin, per backend (GPU)
gdn-serve bench-stack  vLLM's own OpenAI server vs this stack, same machine, one run
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gdn_serve import paths


def _offline_if_local(model_source: str) -> None:
    # A local checkpoint needs no hub; without this, libraries still try to reach it.
    if Path(model_source).is_dir():
        os.environ["HF_HUB_OFFLINE"] = "1"


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gdn_serve.tiny_model import SHAPES, write_tiny_model

    out = Path(args.out) if args.out else paths.default_model_dir()
    spec = replace(SHAPES[args.shape], seed=args.seed)
    print(write_tiny_model(out, spec, device=args.device))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gdn_serve.serve.local import LocalOptions, LocalStack, interrupt_on_signals
    from gdn_serve.serve.processes import wait_until_serving
    from gdn_serve.tiny_model import resolve_model

    paths.apply_cache_env()
    opts = LocalOptions(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        max_model_len=args.max_model_len,
        replicas=args.replicas,
        enforce_eager=args.enforce_eager,
        kv_cache_gib=args.kv_cache_gib,
        simulated_archs=tuple(a for a in (args.simulate_archs or "").split(",") if a),
        quiet=args.quiet,
    )
    opts.validate()
    interrupt_on_signals()  # SIGTERM takes the same way out as Ctrl-C: through stack.stop()
    model_source = resolve_model(args.model)
    _offline_if_local(model_source)
    try:  # before the stack: a missing binary or checkout fails at once
        prometheus = _local_prometheus(args)
    except RuntimeError as exc:  # PrometheusError
        print(f"gdn-serve: {exc}", file=sys.stderr)
        return 2
    stack = LocalStack(opts, model_source, handle_signals=True)
    try:
        if prometheus is not None:  # ready before the API answers; scrapes fail until Ray is up
            prometheus.start()
        stack.start()
        wait_until_serving(stack.api_url)
        print(banner(stack, prometheus), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("\ngdn-serve: stopping (Serve, Ray, vLLM)...", flush=True)
    finally:
        if prometheus is not None:  # first: stack.stop() waits for every child to end
            prometheus.stop()
        stack.stop()
        print("gdn-serve: stopped", flush=True)
    return 0


def _local_prometheus(args: argparse.Namespace) -> Any:
    if args.prometheus is None:
        return None
    from gdn_serve.serve.processes import free_port
    from gdn_serve.serve.prometheus import LocalPrometheus, PrometheusOptions

    port = args.prometheus or free_port()
    return LocalPrometheus(PrometheusOptions(metrics_port=args.metrics_port, port=port))


def banner(stack: Any, prometheus: Any = None) -> str:
    config = stack.config
    lines = [
        f"gdn-serve: serving {config.served_model_name!r} from {config.model_source}",
        f"  OpenAI API  {stack.api_url}   (e.g. {stack.api_url}/models)",
        f"  Metrics     {stack.metrics_url}   (vLLM as ray_vllm_*, Ray Serve as ray_serve_*)",
    ]
    if prometheus is not None:
        lines.append(f"  Prometheus  {prometheus.url}   (the chart's rules and alerts loaded)")
    return "\n".join([*lines, "  Ctrl-C stops the stack."])


def cmd_backends(args: argparse.Namespace) -> int:
    from gdn_serve.backends.report import describe_local_choice

    print(describe_local_choice(args.backend))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from gdn_serve.bench.kernels import main as bench_main

    return bench_main(args.passthrough)


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from gdn_serve.bench.engine import main as bench_engine_main

    return bench_engine_main(args.passthrough)


def cmd_bench_stack(args: argparse.Namespace) -> int:
    from gdn_serve.bench.stack import main as bench_stack_main

    return bench_stack_main(args.passthrough)


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdn-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve a model locally (loopback only)")
    run.add_argument("--model", help="checkpoint path or hub id (default: the tiny model)")
    run.add_argument("--served-model-name", help="name clients use (default: from the model)")
    run.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    run.add_argument("--port", type=int, default=8000, help="OpenAI API port")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port")
    run.add_argument("--max-model-len", type=int, default=2048)
    run.add_argument("--replicas", type=int, default=1, help="vLLM engine replicas")
    run.add_argument("--enforce-eager", action="store_true", help="skip torch.compile")
    run.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache size per engine")
    run.add_argument(
        "--simulate-archs",
        metavar="ARCH,ARCH",
        help="one CPU deployment per named arch behind one balancing ingress (multi-arch app)",
    )
    run.add_argument(
        "--prometheus",
        nargs="?",
        const=0,
        type=_port,
        metavar="PORT",
        help="also run Prometheus on 127.0.0.1 (on PORT, else a free port) scraping the stack "
        "with the chart's rules and relabelling",
    )
    run.add_argument(
        "--quiet", action="store_true", help="keep Ray workers' logs out of the terminal"
    )
    run.set_defaults(func=cmd_run)

    tiny = sub.add_parser("tiny-model", help="write the tiny random-weight Qwen3.5 checkpoint")
    tiny.add_argument("--out", help="folder (default: the cache folder's models/tiny-qwen35)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--shape",
        default="tiny",
        choices=["tiny", "qwen3.5-27b-layers", "qwen3.5-35b-a3b-layers"],
        help="tiny (the default model), or the layer dimensions of a published Qwen3.5 model "
        "with 8 layers (dense 27B: 3.5 GB; MoE 35B-A3B with 8 experts: 1.0 GB)",
    )
    tiny.add_argument("--device", default="cpu", help="where to initialise the weights (cuda)")
    tiny.set_defaults(func=cmd_tiny_model)

    backends = sub.add_parser("backends", help="which GDN decode kernel this machine picks")
    backends.add_argument("--backend", help="check a forced backend instead of 'auto'")
    backends.set_defaults(func=cmd_backends)

    # The benchmarks parse their own options (`gdn-serve bench --help`).
    for name, func, text in (
        ("bench", cmd_bench, "GDN decode kernel benchmark (GPU); --help for its options"),
        ("bench-engine", cmd_bench_engine, "CUDA vLLM engine with and without the plugin (GPU)"),
        ("bench-stack", cmd_bench_stack, "vLLM's OpenAI server vs this stack; --help for more"),
    ):
        sub.add_parser(name, help=text, add_help=False).set_defaults(func=func, passthrough=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):
        args.passthrough = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
