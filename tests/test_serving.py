"""`dalle serve`'s API on tiny models: every route, bad input, cancel, queue limits,
seeds, batching of concurrent jobs, failures, the event stream and access rules."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dalle.cli import main
from dalle.models.upsampler import UPSAMPLER_PRESETS, Upsampler
from dalle.serving.api import ServerOptions, create_app
from dalle.serving.backend import DalleBackend, UnCLIPBackend
from dalle.serving.jobs import JobQueue, Limits
from dalle.serving.security import AccessRules
from dalle.serving.server import ServeConfig, access_rules, load_backends
from serving_helpers import SlowBackend, make_tiny_models, make_tiny_unclip

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def backend(models) -> DalleBackend:
    return DalleBackend.load(models[0], models[1], torch.device("cpu"))


def _server(backend, out: Path, rules: AccessRules | None = None, heartbeat: float = 15.0,
            **limits) -> tuple[TestClient, JobQueue]:  # fmt: skip
    """A client and the queue behind it; the worker starts when the client is entered
    (``with client:``), so jobs submitted before then wait in the queue together."""
    queue = JobQueue({backend.name: backend}, out, Limits(**limits))
    options = ServerOptions(rules=rules or AccessRules(), heartbeat_seconds=heartbeat,
                            poll_seconds=0.01)  # fmt: skip
    return TestClient(create_app(queue, options), base_url=BASE), queue


def _wait(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/v1/generations/{job_id}").json()
        if view["status"] in ("done", "failed", "cancelled"):
            return view
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def _pixels(client: TestClient, view: dict) -> list[bytes]:
    """Each image's decoded pixels (not the PNG bytes: those carry the job id)."""
    out = []
    for image in view["images"]:
        png = client.get(image["url"]).content
        out.append(Image.open(io.BytesIO(png)).convert("RGB").tobytes())
    return out


def test_a_job_runs_and_its_images_are_kept_with_their_prompt(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path)
    with client:
        answer = client.post("/v1/generations", json={"prompt": "a red circle", "num_images": 4,
                                                      "keep": 2, "seed": 7})  # fmt: skip
        assert answer.status_code == 202
        job = answer.json()
        assert job["status"] in ("queued", "running") and job["queue_position"] >= 0
        view = _wait(client, job["id"])
    assert view["status"] == "done", view
    assert view["progress"]["fraction"] == 1.0
    assert view["settings"]["rerank"] is True and view["settings"]["keep"] == 2
    scores = [image["score"] for image in view["images"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)  # best first
    assert {image["seed"] for image in view["images"]} <= {7, 8, 9, 10}
    png = client.get(view["images"][0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.size == (8, 8) and image.text["prompt"] == "a red circle"
        assert json.loads(image.text["parameters"])["seed"] == view["images"][0]["seed"]
    saved = json.loads((tmp_path / job["id"] / "0.json").read_text())
    assert saved["prompt"] == "a red circle" and saved["score"] == pytest.approx(scores[0])
    archive = zipfile.ZipFile(
        io.BytesIO(client.get(f"/v1/generations/{job['id']}/images.zip").content)
    )
    assert sorted(archive.namelist()) == sorted(f"{job['id']}/{n}" for n in
                                                ("0.png", "0.json", "1.png", "1.json"))  # fmt: skip
    inline = client.get(f"/v1/generations/{job['id']}", params={"base64": "true"}).json()
    assert base64.b64decode(inline["images"][1]["base64"]) == client.get(
        view["images"][1]["url"]).content  # fmt: skip


def test_models_health_and_the_page(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path)
    with client:
        models = client.get("/v1/models").json()
        assert models["models"][0]["pipeline"] == "dalle"
        assert models["models"][0]["rerank"] is True
        assert models["models"][0]["max_prompt_tokens"] == 39
        assert models["limits"]["max_images"] == 16
        assert client.get("/health").json() == {"status": "ok", "jobs_waiting": 0}
        page = client.get("/")
        assert page.status_code == 200 and "<form" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/page/app.js").status_code == 200
        assert client.get("/openapi.json").json()["paths"]["/v1/generations"]


def test_a_seed_gives_the_same_images_alone_or_batched_with_others(backend, tmp_path) -> None:
    body = {"prompt": "a blue star", "num_images": 3, "seed": 0, "rerank": False}
    # Alone, with batching off.
    client, _ = _server(backend, tmp_path / "alone", batching=False)
    with client:
        alone = client.post("/v1/generations/sync", json=body).json()
        again = client.post("/v1/generations/sync", json=body).json()
        # Image 2 of seed 0 is image 0 of seed 2.
        single = client.post("/v1/generations/sync", json={**body, "seed": 2, "num_images": 1})
        alone_pixels, single_pixels = _pixels(client, alone), _pixels(client, single.json())
        assert alone_pixels == _pixels(client, again)
    assert all(image["base64"] for image in alone["images"])  # the sync route inlines them
    assert [i["seed"] for i in alone["images"]] == [0, 1, 2]
    assert single_pixels[0] == alone_pixels[2]
    # Batched: three jobs queued before the worker starts share one sampling batch.
    client, queue = _server(backend, tmp_path / "batched")
    others = [
        {"prompt": "two green squares", "num_images": 4, "seed": 5, "rerank": False},
        {"prompt": "a yellow cross", "num_images": 2, "seed": 9, "rerank": False},
    ]
    ids = [client.post("/v1/generations", json=b).json()["id"] for b in (*others, body)]
    assert client.get(f"/v1/generations/{ids[2]}").json()["queue_position"] == 2
    with client:
        views = [_wait(client, job_id) for job_id in ids]
        batched_pixels = _pixels(client, views[2])
    assert queue.batches == 1 and queue.batched_jobs == 1
    assert batched_pixels == alone_pixels
    # `dalle generate` seeds its draws the same way.
    out_dir = tmp_path / "cli"
    assert main(["generate", "a blue star", "--model", str(backend.model_dir), "--num", "3",
                 "--seed", "0", "--out-dir", str(out_dir)]) == 0  # fmt: skip
    cli = [Image.open(out_dir / f"{i:04d}.png").convert("RGB").tobytes() for i in range(3)]
    assert cli == alone_pixels


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "a red circle " * 20}, "prompt"),  # more tokens than the model reads
        ({"prompt": "x" * 5000}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "a red circle", "num_images": "4"}, "num_images"),
        ({"prompt": "a red circle", "num_images": 2.5}, "num_images"),
        ({"prompt": "a red circle", "num_images": -1}, "num_images"),
        ({"prompt": "a red circle", "num_images": 0}, "num_images"),
        ({"prompt": "a red circle", "num_images": 17}, "num_images"),
        ({"prompt": "a red circle", "num_images": 2, "keep": 3}, "keep"),
        ({"prompt": "a red circle", "num_images": 4, "keep": 2, "rerank": False}, "keep"),
        ({"prompt": "a red circle", "seed": -1}, "seed"),
        ({"prompt": "a red circle", "seed": 2**70}, "seed"),
        ({"prompt": "a red circle", "temperature": 0}, "temperature"),
        ({"prompt": "a red circle", "top_p": 1.5}, "top_p"),
        ({"prompt": "a red circle", "top_k": -3}, "top_k"),
        ({"prompt": "a red circle", "rerank": "yes"}, "rerank"),
        ({"prompt": "a red circle", "pipeline": "unclip"}, "pipeline"),
        ({"prompt": "a red circle", "colour": "red"}, "colour"),
    ],
)
def test_bad_requests_are_422_naming_the_field(backend, tmp_path, body, field) -> None:
    client, _ = _server(backend, tmp_path)
    answer = client.post("/v1/generations", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert client.get("/health").status_code == 200


def test_malformed_bodies_are_4xx_and_the_server_goes_on(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path)
    send = {"headers": {"content-type": "application/json"}}
    assert client.post("/v1/generations", content=b"{not json", **send).status_code == 400
    assert client.post("/v1/generations", content=b'{"prompt": NaN}', **send).status_code == 422
    huge = json.dumps({"prompt": "a" * 20_000}).encode()
    assert client.post("/v1/generations", content=huge, **send).status_code == 413

    def chunks():  # no Content-Length: the limit must still hold
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 1000
        yield b'"}'

    assert client.post("/v1/generations", content=chunks(), **send).status_code == 413
    form = client.post("/v1/generations", data={"prompt": "a red circle"})
    assert form.status_code == 415
    assert client.post("/v1/generations", json={"prompt": "a red circle"}).status_code == 202
    client.close()


def test_without_a_clip_rerank_is_refused(models, tmp_path) -> None:
    plain = DalleBackend.load(models[0], None, torch.device("cpu"))
    client, _ = _server(plain, tmp_path)
    answer = client.post("/v1/generations", json={"prompt": "a red circle", "rerank": True})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "rerank"
    with client:
        view = client.post("/v1/generations/sync", json={"prompt": "a red circle"}).json()
    assert view["settings"]["rerank"] is False and view["images"][0]["score"] is None


def test_unknown_jobs_and_images_are_404_and_no_path_reaches_a_file(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path)
    missing = "0" * 32
    assert client.get(f"/v1/generations/{missing}").status_code == 404
    assert client.delete(f"/v1/generations/{missing}").status_code == 404
    assert client.get("/v1/generations/not-an-id").status_code == 422
    assert client.get("/v1/generations/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/page/..%2Fapi.py").status_code == 404
    assert client.get("/page/../serving/api.py").status_code == 404
    with client:
        job = client.post("/v1/generations/sync", json={"prompt": "a red circle", "num_images": 1})
        job_id = job.json()["id"]
        assert client.get(f"/v1/generations/{job_id}/images/5.png").status_code == 404
        assert client.get(f"/v1/generations/{job_id}/images/..%2F0.png").status_code in (404, 422)


def test_cancel_a_queued_and_a_running_job(backend, tmp_path) -> None:
    slow = SlowBackend(backend, step_seconds=0.05)
    client, queue = _server(slow, tmp_path, batching=False)
    first = client.post("/v1/generations", json={"prompt": "a red circle"}).json()
    second = client.post("/v1/generations", json={"prompt": "a blue star"}).json()
    cancelled = client.delete(f"/v1/generations/{second['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.delete(f"/v1/generations/{second['id']}").status_code == 409
    with client:
        deadline = time.monotonic() + 30
        while client.get(f"/v1/generations/{first['id']}").json()["progress"]["done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.delete(f"/v1/generations/{first['id']}").json()["status"] == "cancelled"
        time.sleep(0.3)  # the worker abandons the batch at its next step
        third = client.post("/v1/generations/sync", json={"prompt": "a green square",
                                                          "num_images": 1})  # fmt: skip
    assert third.status_code == 200 and third.json()["status"] == "done"
    for job in (first, second):
        view = queue.get(job["id"])
        assert view.status == "cancelled" and view.images == []
        assert not (tmp_path / job["id"]).exists()
    assert queue.batches == 2  # the cancelled queued job was never sampled


def test_a_full_queue_is_429_with_retry_after(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path, max_queue=2)
    for _ in range(2):
        assert client.post("/v1/generations", json={"prompt": "a red circle"}).status_code == 202
    full = client.post("/v1/generations", json={"prompt": "a red circle"})
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert "queue is full" in full.json()["error"]["message"]


def test_a_crash_fails_only_its_own_job(backend, tmp_path) -> None:
    broken = SlowBackend(backend, fail_on="boom")
    client, queue = _server(broken, tmp_path)
    bad = client.post("/v1/generations", json={"prompt": "boom", "num_images": 2}).json()
    good = client.post("/v1/generations", json={"prompt": "a red circle", "num_images": 2}).json()
    with client:
        bad_view, good_view = _wait(client, bad["id"]), _wait(client, good["id"])
        again = client.post("/v1/generations/sync", json={"prompt": "boom"})
        assert client.get("/health").status_code == 200
    assert good_view["status"] == "done" and len(good_view["images"]) == 2
    assert bad_view["status"] == "failed" and "fails on 'boom'" in bad_view["error"]
    assert again.status_code == 500 and again.json()["status"] == "failed"
    assert queue.batches == 4  # shared, then each alone, then the sync job


def test_a_job_past_its_time_limit_fails(backend, tmp_path) -> None:
    slow = SlowBackend(backend, step_seconds=0.05)
    client, _ = _server(slow, tmp_path, max_job_seconds=0.2)
    with client:
        answer = client.post("/v1/generations/sync", json={"prompt": "a red circle"})
    assert answer.status_code == 500 and "limit of 0.2 s" in answer.json()["error"]


def test_the_event_stream_is_numbered_resumable_and_beats(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path, heartbeat=0.05)
    job = client.post("/v1/generations", json={"prompt": "a red circle", "num_images": 2,
                                               "rerank": False})  # fmt: skip
    url = f"/v1/generations/{job.json()['id']}/events"
    # While the job waits (no worker yet), the stream sends heartbeats.
    with client.stream("GET", url) as stream:
        lines = []
        for line in stream.iter_lines():
            lines.append(line)
            if line.startswith(": heartbeat"):
                break
    assert lines[0] == "id: 1" and "event: status" in lines
    with client:
        _wait(client, job.json()["id"])
        events = _events(client.get(url).text)
        resumed = _events(client.get(url, headers={"Last-Event-ID": "3"}).text)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and events[-1]["data"]["status"] == "done"
    assert "progress" in kinds and kinds.count("image") == 2
    fractions = [e["data"]["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert resumed == events[3:]


def _events(text: str) -> list[dict]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if fields:
            out.append({"id": int(fields["id"]), "event": fields["event"],
                        "data": json.loads(fields["data"])})  # fmt: skip
    return out


def test_history_is_bounded(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path, history_count=2)
    with client:
        ids = [client.post("/v1/generations/sync", json={"prompt": "a red circle",
                                                         "num_images": 1}).json()["id"]
               for _ in range(4)]  # fmt: skip
        client.post("/v1/generations", json={"prompt": "a red circle", "num_images": 1})
        assert client.get(f"/v1/generations/{ids[0]}").status_code == 404
        assert client.get(f"/v1/generations/{ids[3]}").status_code == 200
    assert (tmp_path / ids[0] / "0.png").exists()  # forgotten by the server, kept on disk


def test_hosts_origins_and_tokens(backend, tmp_path) -> None:
    client, _ = _server(backend, tmp_path)
    body = {"prompt": "a red circle", "num_images": 1}
    assert client.get("/health", headers={"host": "evil.example:8000"}).status_code == 400
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        refused = client.post("/v1/generations", json=body, headers={"origin": origin})
        assert refused.status_code == 403, origin
    same = client.post("/v1/generations", json=body, headers={"origin": BASE})
    assert same.status_code == 202
    assert client.get("/v1/models", headers={"origin": "http://evil.example"}).status_code == 200
    assert "access-control-allow-origin" not in client.get("/v1/models").headers
    locked, _ = _server(backend, tmp_path, AccessRules(token="s3cret"))
    assert locked.get("/v1/models").status_code == 401
    assert locked.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert locked.get("/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert locked.get("/health").status_code == 200 and locked.get("/").status_code == 200


def test_a_public_address_needs_a_token_or_insecure(models, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("DALLE_SERVE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="--token"):
        access_rules(ServeConfig(model=models[0], host="0.0.0.0"))
    assert access_rules(ServeConfig(model=models[0], host="0.0.0.0", token="t")).token == "t"
    open_rules = access_rules(ServeConfig(model=models[0], host="0.0.0.0", insecure=True))
    assert open_rules.token is None and open_rules.allowed_hosts == ()
    assert access_rules(ServeConfig(model=models[0])).allowed_hosts[0] == "localhost"
    args = ["serve", "--model", str(models[0]), "--host", "0.0.0.0", "--out-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err


@pytest.fixture(scope="module")
def unclip_backend(models, tmp_path_factory) -> UnCLIPBackend:
    prior, decoder = make_tiny_unclip(tmp_path_factory.mktemp("unclip"), models[1])
    backend = UnCLIPBackend.load(decoder, prior, torch.device("cpu"))
    backend.prior_steps, backend.decoder_steps = 3, 3
    return backend


def test_both_systems_are_served_and_unclip_images_keep_their_seeds(
    backend, unclip_backend, tmp_path
) -> None:
    body = {"prompt": "a blue star", "pipeline": "unclip", "num_images": 2, "seed": 4,
            "rerank": False}  # fmt: skip
    both = {"dalle": backend, "unclip": unclip_backend}

    def server(folder: str, **limits) -> tuple[TestClient, JobQueue]:
        queue = JobQueue(both, tmp_path / folder, Limits(**limits))
        return TestClient(create_app(queue, ServerOptions(poll_seconds=0.01)), base_url=BASE), queue

    client, _ = server("alone", batching=False)
    with client:
        models = client.get("/v1/models").json()["models"]
        assert [m["pipeline"] for m in models] == ["dalle", "unclip"]
        refused = client.post("/v1/generations", json={**body, "temperature": 0.5})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "temperature"
        alone = client.post("/v1/generations/sync", json=body).json()
        assert alone["status"] == "done" and alone["progress"]["total"] == 2 * 6
        alone_pixels = _pixels(client, alone)
        again = client.post("/v1/generations/sync", json=body).json()
        assert _pixels(client, again) == alone_pixels  # same seed, same batch: identical
    assert len(alone_pixels) == 2 and len(alone_pixels[0]) == 32 * 32 * 3
    client, queue = server("batched")
    other = {**body, "prompt": "two red circles", "seed": 11, "num_images": 3}
    ids = [client.post("/v1/generations", json=b).json()["id"] for b in (other, body)]
    with client:
        batched_pixels = _pixels(client, _wait(client, ids[1]))
    assert queue.batched_jobs == 1
    # The same images: diffusion is continuous, and a matrix product's rounding depends a
    # little on the batch's size, so a pixel value may differ by one level (unlike
    # DALL-E's discrete tokens, which come out identical).
    for a, b in zip(alone_pixels, batched_pixels, strict=True):
        diff = (torch.frombuffer(bytearray(a), dtype=torch.uint8).int()
                - torch.frombuffer(bytearray(b), dtype=torch.uint8).int()).abs()  # fmt: skip
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.02


def test_an_upsampler_serves_dall_e_2_larger_with_its_steps_in_the_progress(
    models, tmp_path
) -> None:
    """`dalle serve --upsampler`: DALL-E 2's images come back at the upsampler's size,
    the models list says so, and progress counts the upsampler's steps too; an upsampler
    without DALL-E 2 is refused."""
    prior, decoder = make_tiny_unclip(tmp_path / "unclip", models[1])
    torch.manual_seed(2)
    Upsampler(replace(UPSAMPLER_PRESETS["upsampler-tiny"], image_size=64)).save_pretrained(
        tmp_path / "upsampler"
    )
    backend = UnCLIPBackend.load(decoder, prior, torch.device("cpu"), tmp_path / "upsampler")
    backend.prior_steps, backend.decoder_steps, backend.pipe.upsampler_steps = 2, 2, 3
    assert backend.steps_per_image == 7 and backend.image_size == 64
    client, _ = _server(backend, tmp_path / "out")
    with client:
        assert client.get("/v1/models").json()["models"][0]["image_size"] == 64
        body = {"prompt": "a blue star", "pipeline": "unclip", "num_images": 2, "seed": 1,
                "rerank": False}  # fmt: skip
        done = client.post("/v1/generations/sync", json=body).json()
    assert done["status"] == "done"
    assert (done["progress"]["done"], done["progress"]["total"]) == (14, 14)
    assert [len(p) for p in _pixels(client, done)] == [64 * 64 * 3] * 2
    with pytest.raises(ValueError, match="--upsampler enlarges"):
        load_backends(ServeConfig(model=models[0], upsampler=tmp_path / "upsampler"))
