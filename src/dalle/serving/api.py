"""The HTTP API and the page: routes over a :class:`~dalle.serving.jobs.JobQueue`.

Routes (JSON in and out; errors are ``{"error": {"message", "field"}}`` with a 4xx):

- ``POST /v1/generations``: queue a job, answered at once (202) with its id and place;
- ``POST /v1/generations/sync``: the same, answered when the job is done;
- ``GET /v1/generations/{id}``: status, progress and images (``?base64=true`` inlines them);
- ``DELETE /v1/generations/{id}``: cancel a queued or running job;
- ``GET /v1/generations/{id}/events``: progress as server-sent events (``Last-Event-ID``
  resumes; a heartbeat comment every 15 s);
- ``GET /v1/generations/{id}/images/{n}.png`` and ``.../images.zip``;
- ``GET /v1/models``, ``GET /health``, and the page at ``/``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from dalle.serving.jobs import FINISHED, Job, JobQueue, JobRequest, QueueFull
from dalle.serving.security import AccessRules, Guard

JobId = Annotated[str, PathParam(pattern="^[0-9a-f]{32}$", description="a job id")]
MAX_SEED = 2**62  # seeds of a job's images are seed + i; they must stay within int64


class GenerationBody(BaseModel):
    """A generation request; settings left out take the model's recommended values."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=2000, description="the caption to draw")
    num_images: int | None = Field(None, ge=1, description="images drawn (default 4)")
    keep: int | None = Field(
        None, ge=1, description="images returned: the best `keep` by the CLIP (needs rerank)"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default: a random one")
    temperature: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    guidance_scale: float | None = Field(None, ge=-100, le=100, allow_inf_nan=False)
    rerank: bool | None = Field(None, description="order (and cut to `keep`) by CLIP score")
    pipeline: str | None = Field(None, max_length=64, description="default: the first loaded")


class FieldError(Exception):
    def __init__(self, field_name: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field_name, message, status


@dataclass
class ServerOptions:
    rules: AccessRules = field(default_factory=AccessRules)
    default_images: int = 4
    heartbeat_seconds: float = 15.0
    poll_seconds: float = 0.05  # how often waiting routes look at a job


def to_job_request(body: GenerationBody, queue: JobQueue, options: ServerOptions) -> JobRequest:
    """Fills in defaults and checks what the schema cannot (limits of this server and
    model); a violation is a :class:`FieldError` naming the field."""
    name = body.pipeline or next(iter(queue.backends))
    if name not in queue.backends:
        raise FieldError("pipeline", f"unknown pipeline {name!r}; this server has "
                                     f"{', '.join(queue.backends)}")  # fmt: skip
    backend = queue.backends[name]
    prompt = body.prompt.strip()
    if not prompt:
        raise FieldError("prompt", "the prompt is empty")
    tokens, most = backend.prompt_tokens(prompt), backend.max_prompt_tokens
    if tokens > most:
        raise FieldError(
            "prompt", f"the prompt is {tokens} tokens; this model reads at most {most}"
        )
    limit = queue.limits.max_images
    num = body.num_images or min(options.default_images, limit)
    if num > limit:
        raise FieldError("num_images", f"at most {limit} images per job on this server")
    rerank = backend.can_score if body.rerank is None else body.rerank
    if rerank and not backend.can_score:
        raise FieldError("rerank", "this server has no CLIP to re-rank with (start it with --clip)")
    keep = body.keep or num
    if keep > num:
        raise FieldError("keep", f"keep ({keep}) must not exceed num_images ({num})")
    if keep < num and not rerank:
        raise FieldError("keep", "keeping fewer images than drawn needs rerank")
    names = ("temperature", "top_k", "top_p", "guidance_scale")
    given = {k: getattr(body, k) for k in names if getattr(body, k) is not None}
    for unused in set(given) - set(backend.settings):
        raise FieldError(unused, f"the {name} pipeline does not use {unused}")
    try:
        sampling = replace(backend.defaults, **given)
    except ValueError as error:
        raise FieldError(str(error).split(" ", 1)[0], str(error)) from None
    seed = secrets.randbelow(2**31) if body.seed is None else body.seed
    return JobRequest(prompt, num, keep, seed, sampling, rerank, name)


def job_view(queue: JobQueue, job: Job, inline: bool = False) -> dict[str, Any]:
    """The JSON a client sees of a job."""
    with queue.lock:
        images = [queue.image_view(job, record) for record in job.images]
        if inline:
            for view, record in zip(images, job.images, strict=True):
                view["base64"] = base64.b64encode(record.path.read_bytes()).decode()
        view = {"id": job.id, "status": job.status, "prompt": job.request.prompt,
                "settings": job.request.settings(), "progress": queue.progress_of(job),
                "images": images, "error": job.error, "created": job.created,
                "started": job.started, "finished": job.finished}  # fmt: skip
    view["queue_position"] = queue.position(job)
    return view


def create_app(queue: JobQueue, options: ServerOptions | None = None) -> FastAPI:
    options = options or ServerOptions()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        queue.start()
        yield
        queue.stop()

    # No /docs pages: they load scripts from a CDN, which the page's policy forbids and an
    # offline machine cannot reach; the schema stays at /openapi.json.
    app = FastAPI(title="dalle", summary="text to image: DALL-E trained here", lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # fmt: skip
    app.add_middleware(Guard, rules=options.rules)
    _add_error_handlers(app)
    _add_job_routes(app, queue, options)
    _add_file_routes(app, queue)
    _add_info_routes(app, queue)
    page = files("dalle.serving") / "page"
    app.mount("/page", StaticFiles(directory=str(page)), name="page")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(page / "index.html"), media_type="text/html")

    return app


def _error(
    status: int, message: str, field_name: str | None = None, **headers: str
) -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if field_name is not None:
        body["field"] = field_name
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = [str(part) for part in first.get("loc", ())[1:]]
        name = ".".join(where) or "body"
        if first.get("type") == "json_invalid":
            return _error(400, "the body is not valid JSON", "body")
        return _error(422, f"{name}: {first.get('msg', 'invalid')}", name)

    @app.exception_handler(FieldError)
    async def field_error(_: Request, error: FieldError) -> JSONResponse:
        return _error(error.status, f"{error.field}: {error.message}", error.field)

    @app.exception_handler(QueueFull)
    async def full(_: Request, error: QueueFull) -> JSONResponse:
        return _error(429, str(error), None, **{"Retry-After": str(error.retry_after)})

    @app.exception_handler(HTTPException)
    async def http(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), None, **(error.headers or {}))


def _find(queue: JobQueue, job_id: str) -> Job:
    job = queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id} (finished jobs are forgotten after a while)")
    return job


def _add_job_routes(app: FastAPI, queue: JobQueue, options: ServerOptions) -> None:
    @app.post("/v1/generations", status_code=202)
    async def submit(body: GenerationBody) -> dict[str, Any]:
        """Queue a job; answered at once with its id and place in the queue."""
        return job_view(queue, queue.submit(to_job_request(body, queue, options)))

    @app.post("/v1/generations/sync")
    async def submit_and_wait(body: GenerationBody, base64: bool = True) -> JSONResponse:
        """Queue a job and answer when it is finished (images inline unless base64=false)."""
        job = queue.submit(to_job_request(body, queue, options))
        while job.status not in FINISHED:
            await asyncio.sleep(options.poll_seconds)
        status = {"done": 200, "cancelled": 409}.get(job.status, 500)
        return JSONResponse(job_view(queue, job, inline=base64), status_code=status)

    @app.get("/v1/generations/{job_id}")
    async def status(job_id: JobId, base64: bool = False) -> dict[str, Any]:
        return job_view(queue, _find(queue, job_id), inline=base64)

    @app.delete("/v1/generations/{job_id}")
    async def cancel(job_id: JobId) -> dict[str, Any]:
        job = _find(queue, job_id)
        if job.status in FINISHED:
            raise HTTPException(409, f"the job is already {job.status}")
        queue.cancel(job_id)
        return job_view(queue, job)

    @app.get("/v1/generations/{job_id}/events", response_class=StreamingResponse)
    async def events(
        job_id: JobId, request: Request, last_event_id: Annotated[str | None, Header()] = None
    ) -> StreamingResponse:
        """Server-sent events: ``status``, ``progress`` and ``image``, numbered."""
        job = _find(queue, job_id)
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        stream = _event_stream(queue, job, request, start, options)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})  # fmt: skip


async def _event_stream(
    queue: JobQueue, job: Job, request: Request, sent: int, options: ServerOptions
) -> AsyncIterator[str]:
    beat = time.monotonic()
    while True:
        with queue.lock:
            new, finished = job.events[sent:], job.status in FINISHED
        for event in new:
            data = json.dumps(event["data"])
            yield f"id: {event['id']}\nevent: {event['event']}\ndata: {data}\n\n"
            sent = event["id"]
        if finished and not new:
            return
        if time.monotonic() - beat >= options.heartbeat_seconds:
            yield ": heartbeat\n\n"
            beat = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(options.poll_seconds)


def _add_file_routes(app: FastAPI, queue: JobQueue) -> None:
    @app.get("/v1/generations/{job_id}/images/{index}.png", response_class=FileResponse)
    async def image(job_id: JobId, index: int) -> FileResponse:
        job = _find(queue, job_id)
        with queue.lock:
            found = [r for r in job.images if r.index == index]
        if not found:
            raise HTTPException(404, f"job {job_id} has no image {index}")
        return FileResponse(found[0].path, media_type="image/png")

    @app.get("/v1/generations/{job_id}/images.zip", response_class=Response)
    async def archive(job_id: JobId) -> Response:
        job = _find(queue, job_id)
        with queue.lock:
            records = list(job.images)
        if not records:
            raise HTTPException(404, f"job {job_id} has no images yet")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            for record in records:
                zipped.write(record.path, f"{job_id}/{record.path.name}")
                zipped.write(record.path.with_suffix(".json"), f"{job_id}/{record.index}.json")
        saved_as = {"Content-Disposition": f'attachment; filename="{job_id}.zip"'}
        return Response(buffer.getvalue(), media_type="application/zip", headers=saved_as)


def _add_info_routes(app: FastAPI, queue: JobQueue) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        with queue.lock:
            waiting = sum(job.status not in FINISHED for job in queue.jobs.values())
        return {"status": "ok", "jobs_waiting": waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        limits = queue.limits
        return {"models": [backend.describe() for backend in queue.backends.values()],
                "limits": {"max_images": limits.max_images, "max_queue": limits.max_queue,
                           "max_job_seconds": limits.max_job_seconds,
                           "batch_size": limits.batch_size}}  # fmt: skip
