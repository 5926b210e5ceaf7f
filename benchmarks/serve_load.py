"""`dalle serve` under load: N concurrent clients on loopback for a bounded time.

Starts the server as its own process (with and then without batching of concurrent
jobs, or as told), runs the clients for ``--seconds``, lets the jobs in flight finish,
and reports requests served, images/s, p50/p95 latency from submission to the last
image, any 5xx, lost or duplicated jobs (every accepted job must end done, with its own
images on disk), and the server's memory at the start and the end of the load.

    python benchmarks/serve_load.py --model outputs/demo/dalle --clip outputs/demo/clip \\
        --clients 8 --seconds 120 --json RESULT.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dalle.data.shapes_world import sample_caption


@dataclass
class Client:
    """One client's record: what it asked for and what it got."""

    submitted: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    images: int = 0
    server_errors: int = 0
    refused: int = 0  # 429: the queue was full
    other: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    args: argparse.Namespace, batching: bool, out_dir: Path
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "dalle", "serve", "--model", str(args.model), "--port",
               str(port), "--out-dir", str(out_dir), "--max-queue", str(4 * args.clients),
               "--batch-size", str(args.batch_size), "--device", "cpu"]  # fmt: skip
    if args.clip:
        command += ["--clip", str(args.clip)]
    if not batching:
        command.append("--no-batching")
    log = open(out_dir.parent / f"server-{'batched' if batching else 'alone'}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            break
    server.kill()
    raise RuntimeError(f"the server did not start; see {log.name}")


def run_client(
    base: str, index: int, args: argparse.Namespace, until: float, record: Client
) -> None:
    """Submits a job, follows it to the end, and again, until ``until``. The prompts and
    seeds follow the client's index, so both servers see the same jobs in the same order."""
    rng = random.Random(index)
    with httpx.Client(base_url=base, timeout=600) as http:
        n = 0
        while time.monotonic() < until:
            body = {"prompt": sample_caption(1000 + index, n, "train"), "num_images": args.images,
                    "seed": 1000 * index + n, "rerank": bool(args.clip)}  # fmt: skip
            n += 1
            start = time.monotonic()
            answer = http.post("/v1/generations", json=body)
            if answer.status_code == 429:
                record.refused += 1
                time.sleep(float(answer.headers.get("retry-after", "1")) * rng.random())
                continue
            if answer.status_code >= 500:
                record.server_errors += 1
                continue
            if answer.status_code != 202:
                record.other.append(f"{answer.status_code} {answer.text[:200]}")
                continue
            job_id = answer.json()["id"]
            record.submitted.append(job_id)
            view = follow(http, job_id, record)
            if view is not None and view["status"] == "done":
                record.done.append(job_id)
                record.latencies.append(time.monotonic() - start)
                record.images += len(view["images"])


def follow(http: httpx.Client, job_id: str, record: Client) -> dict | None:
    while True:
        answer = http.get(f"/v1/generations/{job_id}")
        if answer.status_code >= 500:
            record.server_errors += 1
            return None
        view = answer.json()
        if view["status"] in ("done", "failed", "cancelled"):
            if view["status"] != "done":
                record.other.append(f"job {job_id} {view['status']}: {view['error']}")
            return view
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(args: argparse.Namespace, batching: bool, work: Path) -> dict:
    out_dir = work / ("batched" if batching else "alone")
    out_dir.mkdir(parents=True)
    server, base = start_server(args, batching, out_dir)
    try:
        warm = httpx.post(f"{base}/v1/generations/sync", json={"prompt": "a red circle",
                          "num_images": args.images, "seed": 0}, timeout=600)  # fmt: skip
        warm.raise_for_status()
        memory_start = rss_mib(server.pid)
        records = [Client() for _ in range(args.clients)]
        until = time.monotonic() + args.seconds
        started = time.monotonic()
        threads = [threading.Thread(target=run_client, args=(base, i, args, until, records[i]))
                   for i in range(args.clients)]  # fmt: skip
        for thread in threads:
            thread.start()
        memory = []  # (seconds into the load, MiB), every 10 s: flat once history is full
        while any(thread.is_alive() for thread in threads):
            memory.append((round(time.monotonic() - started), round(rss_mib(server.pid), 1)))
            for thread in threads:
                thread.join(timeout=10 / len(threads))
        elapsed = time.monotonic() - started
        memory_end = rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    submitted = [job for r in records for job in r.submitted]
    done = [job for r in records for job in r.done]
    on_disk = {p.name for p in out_dir.iterdir() if p.is_dir()} - {warm.json()["id"]}
    images_on_disk = sum(len(list((out_dir / job).glob("*.png"))) for job in on_disk)
    latencies = [t for r in records for t in r.latencies]
    images = sum(r.images for r in records)
    return {
        "batching": batching,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "jobs_submitted": len(submitted),
        "jobs_done": len(done),
        "jobs_lost": len(set(submitted) - set(done)),
        "jobs_duplicated": len(submitted) - len(set(submitted)),
        "job_folders_on_disk": len(on_disk),
        "images": images,
        "images_on_disk": images_on_disk,
        "images_per_second": round(images / elapsed, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 2),
        "latency_p95_s": round(percentile(latencies, 0.95), 2),
        "server_errors": sum(r.server_errors for r in records),
        "refused_429": sum(r.refused for r in records),
        "other_problems": [p for r in records for p in r.other][:10],
        "memory_start_mib": round(memory_start, 1),
        "memory_end_mib": round(memory_end, 1),
        "memory_mib_over_time": memory,
        "per_client": [
            {
                "submitted": len(r.submitted),
                "done": len(r.done),
                "images": r.images,
                "refused_429": r.refused,
            }
            for r in records
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--images", type=int, default=4, help="num_images of every job")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mode", choices=["both", "batched", "alone"], default="both")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for batching in {"both": (True, False), "batched": (True,), "alone": (False,)}[args.mode]:
            result = measure(args, batching, Path(tmp))
            results.append(result)
            shown = {k: v for k, v in result.items() if k != "per_client"}
            print(json.dumps(shown), flush=True)
    summary: dict = {"runs": results}
    if len(results) == 2:
        summary["batched_over_alone"] = round(
            results[0]["images_per_second"] / results[1]["images_per_second"], 2)  # fmt: skip
        print(f"batched / one job at a time: {summary['batched_over_alone']}x images/s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
