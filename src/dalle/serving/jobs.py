"""Generation jobs, their queue, and the one worker thread that owns the model.

Clients submit jobs; the worker draws their images in batches. A batch takes the job that
has waited longest since it was last served, then fills up round-robin, one image at a
time, from every other job with the same pipeline and sampling settings, so a large job
cannot starve a small one and concurrent clients share one sampling batch. Image ``i``
of a job with seed ``s`` draws from its own generator seeded ``s + i``: it is the same
image whatever shared its batch, and asking for seed ``s + i`` alone gives it again.

Everything a route reads or changes is guarded by one lock; the worker holds it only
between sampling steps, never while the model runs.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo

from dalle.data.images import to_pil
from dalle.sampling.sampler import SamplingConfig
from dalle.serving.backend import Backend

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})


@dataclass(frozen=True)
class JobRequest:
    """A validated request: every setting filled in (defaults already applied)."""

    prompt: str
    num_images: int  # images drawn
    keep: int  # images returned: the best ``keep`` by score when re-ranked, else all
    seed: int
    sampling: SamplingConfig
    rerank: bool
    pipeline: str

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a sampling batch."""
        return (self.pipeline, tuple(asdict(self.sampling).values()))

    def settings(self) -> dict[str, Any]:
        return {"num_images": self.num_images, "keep": self.keep, "seed": self.seed,
                **asdict(self.sampling), "rerank": self.rerank,
                "pipeline": self.pipeline}  # fmt: skip


@dataclass
class ImageRecord:
    index: int  # place in the job's answer (best first when re-ranked)
    seed: int  # this image's own seed: a job with this seed and one image draws it again
    score: float | None  # the CLIP's cosine similarity with the prompt, when there is one
    path: Path


@dataclass(eq=False)  # a job is itself: hashed and compared by identity
class Job:
    id: str
    request: JobRequest
    steps_total: int
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    steps_done: int = 0
    pending: deque[int] = field(default_factory=deque)  # draws not yet in a batch
    in_flight: int = 0  # draws in the batch being sampled
    # Draws not yet published, by draw index: (uint8 [3, H, W], score)
    drawn: dict[int, tuple[torch.Tensor, float | None]] = field(default_factory=dict)
    draws_done: int = 0
    images: list[ImageRecord] = field(default_factory=list)
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    last_served: float = 0.0
    solo: bool = False  # sampled alone after a batch it shared failed
    started: float | None = None
    finished: float | None = None
    deadline: float = math.inf

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Appends event number ``len(events) + 1`` (the event stream's ids)."""
        self.events.append({"id": len(self.events) + 1, "event": kind, "data": data})

    @property
    def percent(self) -> int:
        return 100 * self.steps_done // max(self.steps_total, 1)


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class _Abandoned(Exception):
    """Every job of a batch was cancelled or timed out: stop sampling it."""


@dataclass
class Limits:
    max_images: int = 16  # num_images per job
    max_queue: int = 32  # jobs queued or running
    max_job_seconds: float = 600.0  # from a job's first batch to its last image
    batch_size: int = 16  # images per sampling batch
    batching: bool = True  # False: each batch holds one job's images only
    history_count: int = 200  # finished jobs remembered (their files stay on disk)
    history_seconds: float = 3600.0


class JobQueue:
    def __init__(self, backends: dict[str, Backend], out_dir: Path, limits: Limits) -> None:
        self.backends, self.out_dir, self.limits = backends, out_dir, limits
        self.jobs: dict[str, Job] = {}  # in order of submission
        self.lock = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.batches = 0  # sampling batches run, for tests and the load benchmark
        self.batched_jobs = 0  # batches that held more than one job

    # -- routes' side ------------------------------------------------------------------

    def submit(self, request: JobRequest) -> Job:
        backend = self.backends[request.pipeline]
        with self.lock:
            self._forget_old()
            waiting = sum(job.status not in FINISHED for job in self.jobs.values())
            if waiting >= self.limits.max_queue:
                raise QueueFull(self._retry_after())
            job = Job(uuid.uuid4().hex, request, request.num_images * backend.steps_per_image)
            job.pending.extend(range(request.num_images))
            job.last_served = job.created
            job.emit("status", {"status": QUEUED})
            self.jobs[job.id] = job
            self.lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and job.status not in FINISHED:
                job.pending.clear()
                self._finish(job, CANCELLED)
            return job

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job`` that are not finished (0: it is being served or next)."""
        with self.lock:
            if job.status != QUEUED:
                return 0
            ahead = [j for j in self.jobs.values()
                     if j.created < job.created and j.status not in FINISHED]  # fmt: skip
            return len(ahead)

    def _retry_after(self) -> int:
        """Seconds a client turned away should wait: a guess from recent jobs."""
        recent = [j.finished - j.started for j in self.jobs.values()
                  if j.status == DONE and j.started and j.finished]  # fmt: skip
        return max(1, math.ceil(sum(recent[-8:]) / len(recent[-8:]))) if recent else 5

    def _forget_old(self) -> None:
        """Drops finished jobs past the history's count or age (caller holds the lock)."""
        now = time.time()
        finished = [j for j in self.jobs.values() if j.status in FINISHED]
        extra = len(finished) - self.limits.history_count
        for i, job in enumerate(finished):
            if i < extra or now - (job.finished or now) > self.limits.history_seconds:
                del self.jobs[job.id]

    # -- the worker ----------------------------------------------------------------------

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="dalle-worker", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self.lock:
            self._stopping = True
            for job in self.jobs.values():
                if job.status not in FINISHED:
                    job.pending.clear()
                    self._finish(job, CANCELLED, "the server stopped")
            self.lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self.lock:
                batch = self._take_batch()
                while not batch and not self._stopping:
                    self.lock.wait()
                    batch = self._take_batch()
                if self._stopping:
                    return
            try:
                self._run(batch)
            except Exception as error:  # a bug here must not stop the worker: fail the batch
                log.exception("the worker failed outside sampling")
                with self.lock:
                    for job in dict.fromkeys(job for job, _ in batch):
                        job.in_flight = 0
                        if job.status not in FINISHED:
                            job.pending.clear()
                            self._finish(job, FAILED, f"internal error: {error}")

    def _take_batch(self) -> list[tuple[Job, int]]:
        """The next batch's (job, draw index) pairs (caller holds the lock)."""
        waiting = [j for j in self.jobs.values() if j.pending and j.status not in FINISHED]
        if not waiting:
            return []
        first = min(waiting, key=lambda j: j.last_served)
        if first.solo or not self.limits.batching:
            sharing = [first]
        else:
            key = first.request.batch_key()
            sharing = sorted((j for j in waiting if not j.solo and j.request.batch_key() == key),
                             key=lambda j: j.last_served)  # fmt: skip
        batch: list[tuple[Job, int]] = []
        while len(batch) < self.limits.batch_size and any(j.pending for j in sharing):
            for job in sharing:
                if job.pending and len(batch) < self.limits.batch_size:
                    batch.append((job, job.pending.popleft()))
        now = time.time()
        for job, _ in batch:
            job.in_flight += 1
            job.last_served = now
            if job.status == QUEUED:
                job.status, job.started = RUNNING, now
                job.deadline = now + self.limits.max_job_seconds
                job.emit("status", {"status": RUNNING})
        return batch

    def _run(self, batch: list[tuple[Job, int]]) -> None:
        jobs = list(dict.fromkeys(job for job, _ in batch))
        request = jobs[0].request
        backend = self.backends[request.pipeline]
        prompts = [job.request.prompt for job, _ in batch]
        generators = [torch.Generator().manual_seed(job.request.seed + i) for job, i in batch]
        self.batches += 1
        self.batched_jobs += len(jobs) > 1
        try:
            on_step = self._progress(jobs, Counter(job.id for job, _ in batch))
            images = backend.draw(prompts, request.sampling, generators, on_step)
            scores = backend.score(images, prompts) if backend.can_score else None
        except _Abandoned:
            with self.lock:
                for job in jobs:
                    job.in_flight = 0
            return
        except Exception as error:  # one job's crash must not take the server down
            log.exception("a sampling batch of %d job(s) failed", len(jobs))
            self._after_failure(batch, jobs, error)
            return
        self._store(batch, images, scores)

    def _progress(self, jobs: list[Job], counts: Counter) -> Callable[[int], None]:
        """The batch's step callback: progress events, deadlines, and abandoning a batch
        whose every job has gone (cancelled or out of time)."""

        def on_step(step: int) -> None:
            with self.lock:
                now = time.time()
                for job in jobs:
                    if job.status != RUNNING:
                        continue
                    if now > job.deadline:
                        job.pending.clear()
                        limit = self.limits.max_job_seconds
                        self._finish(job, FAILED, f"the job ran past the limit of {limit:g} s")
                        continue
                    before = job.percent
                    job.steps_done += counts[job.id]
                    if job.percent != before:
                        job.emit("progress", self.progress_of(job))
                if all(job.status in FINISHED for job in jobs):
                    raise _Abandoned

        return on_step

    @staticmethod
    def progress_of(job: Job) -> dict[str, Any]:
        return {"done": job.steps_done, "total": job.steps_total,
                "fraction": round(job.steps_done / max(job.steps_total, 1), 4)}  # fmt: skip

    def _after_failure(
        self, batch: list[tuple[Job, int]], jobs: list[Job], error: Exception
    ) -> None:
        """A shared batch failed: sample its jobs alone, so only the one at fault fails.
        A job alone that fails is failed."""
        with self.lock:
            for job in jobs:
                job.in_flight = 0
                if job.status in FINISHED:
                    continue
                if len(jobs) > 1:
                    job.solo = True
                    mine = [i for j, i in batch if j is job]
                    job.pending.extendleft(reversed(mine))
                    job.steps_done = job.draws_done * (job.steps_total // job.request.num_images)
                else:
                    job.pending.clear()
                    self._finish(job, FAILED, f"sampling failed: {type(error).__name__}: {error}")
            self.lock.notify_all()

    def _store(
        self, batch: list[tuple[Job, int]], images: torch.Tensor, scores: torch.Tensor | None
    ) -> None:
        """Keeps each draw of a job still running; writes a job's images when it has them
        all (re-ranked), or as they come (not re-ranked)."""
        ready: list[tuple[Job, list[tuple[int, torch.Tensor, float | None]]]] = []
        with self.lock:
            for k, (job, i) in enumerate(batch):
                job.in_flight -= 1
                if job.status == RUNNING:
                    job.drawn[i] = (images[k], None if scores is None else float(scores[k]))
                    job.draws_done += 1
            for job in dict.fromkeys(job for job, _ in batch):
                if job.status != RUNNING:
                    continue
                complete = not job.pending and job.in_flight == 0
                if job.request.rerank and not complete:
                    continue
                ready.append((job, self._answer(job)))
        for job, answer in ready:
            records = [
                self._write(job, place, i, image, score) for place, i, image, score in answer
            ]
            with self.lock:
                if job.status != RUNNING:
                    continue
                job.images.extend(records)
                for record in records:
                    job.emit("image", self.image_view(job, record))
                if not job.pending and job.in_flight == 0:
                    job.drawn.clear()
                    self._finish(job, DONE)
            self._forget_done()

    def _answer(self, job: Job) -> list[tuple[int, int, torch.Tensor, float | None]]:
        """(place, draw index, image, score) of the images to publish now, taken out of
        ``job.drawn`` (caller holds the lock). Re-ranked: the best ``keep``, best first,
        ties to the earlier draw; otherwise every new draw, in draw order."""
        if job.request.rerank:
            chosen = sorted(job.drawn, key=lambda i: (-(job.drawn[i][1] or 0.0), i))
            chosen = chosen[: job.request.keep]
        else:
            chosen = sorted(job.drawn)
        start = len(job.images)
        published = [(start + n, i, *job.drawn[i]) for n, i in enumerate(chosen)]
        job.drawn.clear()
        return published

    def _write(
        self, job: Job, place: int, draw: int, image: torch.Tensor, score: float | None
    ) -> ImageRecord:
        """``OUT/JOB_ID/PLACE.png`` with the prompt and settings in its text chunks, and the
        same as ``PLACE.json`` beside it: nothing is lost if the client goes away."""
        folder = self.out_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        seed = job.request.seed + draw
        # The job's settings, then this image's own seed in place of the job's.
        meta = {"prompt": job.request.prompt, **job.request.settings(), "job_seed":
                job.request.seed, "seed": seed, "score": score, "job": job.id,
                "created": job.created}  # fmt: skip
        info = PngInfo()
        info.add_text("prompt", job.request.prompt)
        info.add_text("parameters", json.dumps(meta))
        path = folder / f"{place}.png"
        to_pil(image).save(path, pnginfo=info)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return ImageRecord(place, seed, score, path)

    @staticmethod
    def image_view(job: Job, record: ImageRecord) -> dict[str, Any]:
        return {"index": record.index, "url": f"/v1/generations/{job.id}/images/{record.index}.png",
                "seed": record.seed, "score": record.score}  # fmt: skip

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        """Caller holds the lock."""
        job.status, job.error, job.finished = status, error, time.time()
        job.drawn.clear()
        job.emit("status", {"status": status, "error": error})
        self.lock.notify_all()

    def _forget_done(self) -> None:
        with self.lock:
            self._forget_old()
