"""``fedfuse serve`` and ``fedfuse create``."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from fedfuse._net import is_loopback
from fedfuse.cli._commands import COMMANDS
from fedfuse.cli._spec_flags import add_spec_flags, spec_from_args
from fedfuse.recipes import FederationSpec

__all__ = ["add_parsers"]


def _return_freed_memory_to_the_os() -> None:
    """Large arrays (updates, weights) come and go every round. glibc's default raises its
    mmap threshold after such frees and then keeps them on the heap, so the service's memory
    would grow with the traffic; a fixed threshold makes every large free go back at once."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def fast_stack() -> dict[str, Any]:
    """uvicorn options for many parties: the C HTTP parser (httptools) and event loop (uvloop)
    where installed (they are dependencies; ``auto`` falls back to h11/asyncio without them),
    and a listen backlog deep enough for thousands of parties reconnecting at once."""
    have = {name: importlib.util.find_spec(name) is not None for name in ("httptools", "uvloop")}
    return {
        "http": "httptools" if have["httptools"] else "auto",
        "loop": "uvloop" if have["uvloop"] else "auto",
        "backlog": 16384,
    }


def _api_key(args: argparse.Namespace) -> str | None:
    """The API key from ``--api-key-file``, ``FEDFUSE_API_KEY`` or ``--api-key`` (visible in
    ``ps``: the file or the environment keep it out of the process list)."""
    if args.api_key_file:
        key = Path(args.api_key_file).read_text().strip()
        if not key:
            raise ValueError(f"--api-key-file {args.api_key_file} is empty")
        return key
    return args.api_key or os.environ.get("FEDFUSE_API_KEY") or None


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fedfuse.service import ServiceSettings, create_app
    from fedfuse.weights import SizeLimits

    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together")
    api_key = _api_key(args)
    if not is_loopback(args.host) and not args.ssl_certfile and not api_key and not args.insecure:
        raise ValueError(
            f"refusing to serve plain HTTP without an API key on {args.host}: give "
            "--ssl-certfile/--ssl-keyfile and --api-key-file (or FEDFUSE_API_KEY), or --insecure"
        )
    settings = ServiceSettings(
        data_dir=args.data_dir,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        allowed_import_paths=tuple(args.allow_import or ()),
        liveness=args.liveness,
        api_key=api_key,
        read_timeout=args.read_timeout,
        allowed_hosts=tuple(args.allowed_host or ()),
        limits=SizeLimits(max_params=args.max_model_params),
    )
    _return_freed_memory_to_the_os()
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("fedfuse").setLevel(logging.INFO)
    scheme = "https" if args.ssl_certfile else "http"
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # bound here, so --port 0 can say which port it got
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(
        f"fedfuse service on {scheme}://{host}:{port} (state in {args.data_dir}); "
        f"API docs at /docs",
        flush=True,
    )
    config = uvicorn.Config(
        create_app(settings),
        log_level=args.log_level,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        # SIGTERM or Ctrl-C: open long polls and dashboard streams get 5 s, not their 30 s
        # (parties retry; browsers reconnect)
        timeout_graceful_shutdown=5,
        **fast_stack(),
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _create_defaults() -> FederationSpec:
    """``fedfuse create``'s starting point: the service's defaults, a zoo MLP for the digits,
    and training that starts once every party joined."""
    from fedfuse.service import SERVICE_DEFAULTS

    flat = {"model": "mlp", "input_shape": (64,), "num_classes": 10, "learning_rate": 0.05}
    return FederationSpec.from_flat({**flat, "auto_start": True}, base=SERVICE_DEFAULTS)


def _cmd_create(args: argparse.Namespace) -> int:
    from fedfuse.runtime import create_federation

    spec = spec_from_args(args, _create_defaults())
    model_file = None
    if args.model_file:
        model_file = Path(args.model_file).read_bytes()
        spec = spec.replace(model={"name": None, "input_shape": None, "num_classes": None})
    answer = create_federation(
        args.server,
        spec,
        model_file=model_file,
        join_token=args.token,
        verify=args.ca_cert or True,
        api_key=_api_key(args),
    )
    print(json.dumps(answer, indent=1))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help=COMMANDS["serve"].help)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8080, help="port (0: any free one, printed) (default: 8080)"
    )
    serve.add_argument(
        "--data-dir",
        default="fedfuse-data",
        help="SQLite file and checkpoints (default: %(default)s)",
    )
    serve.add_argument(
        "--ssl-certfile", help="serve TLS with this certificate, PEM (default: plain HTTP)"
    )
    serve.add_argument("--ssl-keyfile", help="the certificate's private key, PEM (default: none)")
    serve.add_argument(
        "--max-upload-mb",
        type=int,
        default=256,
        help="request size limit in MiB (default: %(default)s)",
    )
    serve.add_argument(
        "--liveness",
        type=float,
        default=30.0,
        help="seconds without a poll after which a party is not sampled (default: %(default)s)",
    )
    serve.add_argument(
        "--allow-import",
        action="append",
        metavar="MODULE_PREFIX",
        help="let uploaded model files use classes under this import path, repeatable "
        "(default: built-in torch.nn classes only)",
    )
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' to create, control and read federations "
        "(shown by ps: prefer --api-key-file or FEDFUSE_API_KEY) (default: no key)",
    )
    serve.add_argument(
        "--api-key-file", help="read the API key from this file (default: FEDFUSE_API_KEY, if set)"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a host name clients use for this service (Host/Origin check; '*' allows any), "
        "repeatable (default: loopback names and the bound address)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP without an API key on a non-loopback address (default: refuse)",
    )
    serve.add_argument(
        "--max-model-params",
        type=int,
        default=100_000_000,
        help="most parameters an uploaded or zoo model may have (default 100 million)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a request body may send nothing before it is refused, 408 "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--log-level", default="warning", help="uvicorn's log level (default: %(default)s)"
    )
    serve.set_defaults(func=_cmd_serve)

    create = sub.add_parser("create", help=COMMANDS["create"].help)
    create.add_argument(
        "--server", required=True, help="the service's URL, e.g. http://127.0.0.1:8080"
    )
    create.add_argument(
        "--model-file", help="a torch.save(model) file instead of the zoo model (default: none)"
    )
    add_spec_flags(create, _create_defaults())
    create.add_argument(
        "--token", help="the join token to use, 16-256 characters (default: the service makes one)"
    )
    create.add_argument(
        "--ca-cert",
        help="CA bundle for a TLS service with its own certificate (default: the system's)",
    )
    create.add_argument(
        "--api-key",
        help="the service's API key (shown by ps: prefer --api-key-file) (default: none)",
    )
    create.add_argument(
        "--api-key-file",
        help="read the service's API key from this file (default: FEDFUSE_API_KEY, if set)",
    )
    create.set_defaults(func=_cmd_create)
