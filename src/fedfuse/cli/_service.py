"""``fedfuse serve`` and ``fedfuse create``."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
from pathlib import Path

from fedfuse._net import is_loopback

__all__ = ["add_parsers"]


def _return_freed_memory_to_the_os() -> None:
    """Large arrays (updates, weights) come and go every round. glibc's default raises its
    mmap threshold after such frees and then keeps them on the heap, so the service's memory
    would grow with the traffic; a fixed threshold makes every large free go back at once."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


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
    print(
        f"fedfuse service on {scheme}://{args.host}:{args.port} (state in {args.data_dir}); "
        f"API docs at /docs",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    from fedfuse.runtime import create_federation

    form = {
        "fusion_algorithm": args.fusion, "model_type": "pytorch", "num_parties": args.num_parties,
        "rounds": args.rounds, "epochs": args.epochs, "learning_rate": args.learning_rate,
        "optimizer": args.optimizer, "batch_size": args.batch_size, "quorum": args.quorum,
        "round_timeout": args.round_timeout, "seed": args.seed, "auto_start": "true",
    }  # fmt: skip
    model_file = None
    if args.model_file:
        model_file = Path(args.model_file).read_bytes()
    else:
        form |= {
            "model": args.model,
            "input_shape": args.input_shape,
            "num_classes": args.num_classes,
        }
    if args.fraction is not None:
        form["fraction"] = args.fraction
    for name in ("max_update_norm", "max_update_ratio"):
        if getattr(args, name) is not None:
            form[name] = getattr(args, name)
    if args.token:
        form["join_token"] = args.token
    for name in ("fusion_params", "train_options"):
        if getattr(args, name):
            form[name] = getattr(args, name)
    answer = create_federation(
        args.server,
        model_file=model_file,
        verify=args.ca_cert or True,
        api_key=_api_key(args),
        **form,
    )
    print(json.dumps(answer, indent=1))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the aggregator service (REST API + party protocol)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", default="fedfuse-data", help="SQLite file and checkpoints")
    serve.add_argument("--ssl-certfile", help="serve TLS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    serve.add_argument("--max-upload-mb", type=int, default=256, help="request size limit")
    serve.add_argument(
        "--liveness",
        type=float,
        default=30.0,
        help="seconds without a poll after which a party is not sampled",
    )
    serve.add_argument(
        "--allow-import",
        action="append",
        metavar="MODULE_PREFIX",
        help="let uploaded model files use classes under this import path",
    )
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' to create, control and read federations "
        "(shown by ps: prefer --api-key-file or FEDFUSE_API_KEY)",
    )
    serve.add_argument("--api-key-file", help="read the API key from this file")
    serve.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a host name clients use for this service (Host/Origin check; '*' allows any)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP without an API key on a non-loopback address",
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
        help="seconds a request body may send nothing before it is refused (408)",
    )
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=_cmd_serve)

    create = sub.add_parser("create", help="create a federation on a running service")
    create.add_argument("--server", required=True)
    create.add_argument("--model", default="mlp", help="zoo model (default mlp)")
    create.add_argument("--model-file", help="or a torch.save(model) file")
    create.add_argument("--input-shape", default="64", help="e.g. 1,28,28 (default 64: digits)")
    create.add_argument("--num-classes", type=int, default=10)
    create.add_argument("--num-parties", type=int, default=2)
    create.add_argument("--rounds", type=int, default=5)
    create.add_argument("--epochs", type=int, default=1)
    create.add_argument("--batch-size", type=int, default=32)
    create.add_argument("--optimizer", default="sgd")
    create.add_argument("--learning-rate", type=float, default=0.05)
    create.add_argument("--fusion", default="fedavg")
    create.add_argument("--fusion-params", help="JSON, e.g. '{\"server_learning_rate\": 0.01}'")
    create.add_argument("--train-options", help='JSON, e.g. \'{"compression": "int8"}\'')
    create.add_argument("--fraction", type=float)
    create.add_argument("--quorum", type=int, default=1)
    create.add_argument("--round-timeout", type=float, default=600.0)
    create.add_argument("--seed", type=int, default=0)
    create.add_argument(
        "--max-update-norm", type=float, help="reject updates with a larger L2 norm (default: off)"
    )
    create.add_argument(
        "--max-update-ratio",
        type=float,
        help="reject updates moving the model by more than this many times its norm "
        "(service default 10; 0 turns it off)",
    )
    create.add_argument("--token", help="join token to use (default: the service makes one)")
    create.add_argument("--ca-cert", help="CA bundle for a TLS service with its own certificate")
    create.add_argument(
        "--api-key", help="the service's API key (shown by ps: prefer --api-key-file)"
    )
    create.add_argument(
        "--api-key-file", help="read the service's API key from this file (or FEDFUSE_API_KEY)"
    )
    create.set_defaults(func=_cmd_create)
