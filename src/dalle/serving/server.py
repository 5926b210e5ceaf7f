"""Putting a server together from the command line's choices, and running it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI

from dalle.serving.api import ServerOptions, create_app
from dalle.serving.backend import Backend, DalleBackend, UnCLIPBackend
from dalle.serving.jobs import JobQueue, Limits
from dalle.serving.security import LOOPBACK_NAMES, AccessRules, is_loopback

log = logging.getLogger(__name__)
TOKEN_ENV = "DALLE_SERVE_TOKEN"


@dataclass
class ServeConfig:
    model: Path | None = None  # a DALL-E model folder (pipeline "dalle")
    clip: Path | None = None  # its re-ranker
    prior: Path | None = None  # DALL-E 2's prior and decoder folders (pipeline "unclip")
    decoder: Path | None = None
    upsampler: Path | None = None  # optional: enlarges DALL-E 2's images
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    out_dir: Path = Path("outputs/serve")
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 16 * 1024
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def access_rules(config: ServeConfig) -> AccessRules:
    """Loopback: the loopback names. Reachable from elsewhere: a token or ``--insecure``
    is required, and the Host header is checked only against ``--allowed-host`` names."""
    token = config.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(config.host) and token is None and not config.insecure:
        raise ValueError(
            f"--host {config.host} is reachable from other machines: give --token (or set "
            f"{TOKEN_ENV}) or, to serve without one, --insecure"
        )
    if not is_loopback(config.host) and token is None:
        log.warning("serving on %s without a token: anyone who can reach it can use it",
                    config.host)  # fmt: skip
    if is_loopback(config.host):
        hosts = (*LOOPBACK_NAMES, *config.allowed_hosts)
    else:
        hosts = tuple(config.allowed_hosts)
    return AccessRules(token=token, allowed_hosts=tuple(h.lower() for h in hosts),
                       cors_origins=tuple(config.cors_origins),
                       max_body_bytes=config.max_body_bytes)  # fmt: skip


def load_backends(config: ServeConfig) -> dict[str, Backend]:
    """The pipelines to serve, the first the default: DALL-E with ``model``, DALL-E 2
    with ``prior`` and ``decoder``."""
    if (config.prior is None) != (config.decoder is None):
        raise ValueError("DALL-E 2 needs both --prior and --decoder")
    if config.upsampler is not None and config.decoder is None:
        raise ValueError("--upsampler enlarges DALL-E 2's images: give --prior and --decoder too")
    if config.model is None and config.prior is None:
        raise ValueError("give --model (DALL-E), or --prior and --decoder (DALL-E 2), or both")
    backends: list[Backend] = []
    if config.model is not None:
        backends.append(DalleBackend.load(config.model, config.clip, config.device))
    if config.prior is not None and config.decoder is not None:
        backends.append(UnCLIPBackend.load(config.decoder, config.prior, config.device,
                                           config.upsampler))  # fmt: skip
    return {backend.name: backend for backend in backends}


def build_app(config: ServeConfig, backends: dict[str, Backend] | None = None) -> FastAPI:
    rules = access_rules(config)
    if backends is None:
        backends = load_backends(config)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(backends, config.out_dir, config.limits)
    app = create_app(queue, ServerOptions(rules=rules))
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.state.queue = queue
    return app


def serve(config: ServeConfig) -> None:
    import uvicorn

    app = build_app(config)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    names = ", ".join(app.state.queue.backends)
    print(f"serving {names} at http://{shown}:{config.port}/ (Ctrl-C stops)", flush=True)
    # Ctrl-C: open event streams get 5 s to end, then the worker cancels what is left.
    uvicorn.run(app, host=config.host, port=config.port, log_level="info",
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=5)  # fmt: skip
