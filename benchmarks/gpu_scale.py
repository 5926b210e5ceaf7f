"""Training MFU and attention back-ends, and sampling speed against the memory-bandwidth
floor, for a ~300M-parameter DALL-E transformer at the paper's 1,280-token sequence (256
text + 32x32 image tokens) (issues 6 and 17). Run when a GPU is lent; record the results
in BENCHMARKS.md.

    python benchmarks/gpu_scale.py --out results.jsonl       # one GPU
    torchrun --nproc-per-node 8 benchmarks/gpu_scale.py      # FSDP2 over 8 GPUs (training)
    python benchmarks/gpu_scale.py --smoke                   # tiny, on CPU: checks the script

Training variants, each with every block compiled (``torch.compile``) unless --eager:
- ``flex``: the paper's row / column / convolutional schedule through FlexAttention with
  block-sparse masks (fully masked blocks are skipped);
- ``flex64``: FlexAttention with 64x64 tiles (more of a sparse layer's tiles skipped);
- ``sdpa``: the same masks as dense boolean masks through scaled_dot_product_attention;
- ``blocked``: each image row's queries against only the keys its mask reaches
  (:mod:`dalle.models.blocked_attention`, written for CPUs);
- ``causal``: plain causal attention in every layer (the fused kernel, no mask): what the
  sparse schedule must beat to be worth having.

Model FLOPs per token follow PaLM's accounting (6 N for the weights plus 6 x layers x
width x attended keys for attention scores and mixing, forward and backward), with the
keys each query actually attends to under each variant's masks, not the dense S^2: MFU
credits the work the model needs, not work a dense kernel wastes. MFU is given against
the data-sheet peak and against a bf16 matrix product measured in the same run.

Sampling: batch 1 with the growing cache (eager, one launch per kernel) and with the
fixed-shape step replayed as a CUDA graph; batch 16 and 64 images per second. The floor
at batch 1 is the weight bytes read once per token over the copy bandwidth measured in
the same run (a device-to-device copy, bytes read plus written).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from dalle.models.dalle_transformer import DALLEConfig, DALLETransformer
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens
from dalle.training import distributed
from dalle.training.parallelize import ParallelPlan, parallelize

# Dense bf16 tensor-core peak and memory bandwidth, from NVIDIA's data sheets.
PEAKS = {
    "H100 80GB HBM3": (989e12, 3.35e12),  # SXM
    "H100 PCIe": (756e12, 2.0e12),
    "H200": (989e12, 4.8e12),
    "A100-SXM4-80GB": (312e12, 2.04e12),
}


def device_peaks(name: str) -> tuple[float, float] | None:
    return next((v for k, v in PEAKS.items() if k in name), None)


def attended_keys_per_query(model: DALLETransformer) -> float:
    """Mean number of keys a query attends to, over the layers' masks."""
    c = model.config
    per_layer = [getattr(model, f"mask_{kind}").sum().item() for kind in c.layer_attention]
    return sum(per_layer) / len(per_layer) / c.sequence_length


def flops_per_token(model: DALLETransformer, parameters: int) -> float:
    c = model.config
    return 6 * parameters + 6 * c.layers * c.width * attended_keys_per_query(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_ceilings(device: torch.device) -> dict:
    """A bf16 8192^3 matrix product's rate and a 2 GiB device copy's bandwidth (read +
    written), each the median of 10 after 3 warm-ups, on random data."""
    if device.type != "cuda":
        return {}
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn(2**29, device=device)  # 2 GiB of fp32
    dst = torch.empty_like(src)

    def median_seconds(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[len(times) // 2]

    matmul = 2 * 8192**3 / median_seconds(lambda: a @ b)
    copy = 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src))
    return {"matmul_bf16_flops": matmul, "copy_bytes_per_s": copy}


def train_step_time(model, text, image, steps: int, device: torch.device) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    for i in range(steps + 3):  # three warm-up steps (compilation, allocator)
        if i == 3:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model.loss(text, image)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - start) / steps


def build(config: DALLEConfig, device: torch.device, shard: bool, compile_blocks: bool):
    torch.manual_seed(0)
    with torch.device("meta" if shard else device):
        model = DALLETransformer(config)
    plan = ParallelPlan(compile=compile_blocks, shard=shard, compute_dtype=torch.bfloat16)
    return parallelize(model, plan, device)


VARIANTS = {  # name -> (attention back-end, every layer full causal, FlexAttention block)
    "flex": ("flex", False, 128),
    "flex64": ("flex", False, 64),
    "sdpa": ("sdpa", False, 128),
    "blocked": ("blocked", False, 128),
    "causal": ("sdpa", True, 128),
}


def time_training(name: str, sizes: dict, args, device, rank, ceilings: dict) -> dict:
    backend, causal, block = VARIANTS[name]
    extra = {"attention": ["full"] * sizes["layers"]} if causal else {}
    config = DALLEConfig(**sizes, **extra, attention_backend=backend, flex_block_size=block)
    shard = rank.enabled
    model = build(config, device, shard, not args.eager)
    parameters = sum(p.numel() for p in model.parameters())
    if shard:
        parameters = sum(p.full_tensor().numel() for p in model.parameters())
    text = torch.randint(2, config.text_vocab_size, (args.batch, config.text_len), device=device)
    image = torch.randint(0, config.image_vocab_size, (args.batch, config.image_tokens),
                          device=device)  # fmt: skip
    started = time.perf_counter()
    seconds = train_step_time(model, text, image, args.steps, device)
    tokens = args.batch * config.sequence_length * rank.world_size
    achieved = flops_per_token(model, parameters) * tokens / seconds / rank.world_size
    entry = {"variant": name, "parameters": parameters, "batch_per_gpu": args.batch,
             "compiled": not args.eager, "step_s": seconds, "tokens_per_s": tokens / seconds,
             "attended_keys_per_query": attended_keys_per_query(model),
             "model_tflops_per_gpu": achieved / 1e12,
             "wall_s_with_compile": time.perf_counter() - started}  # fmt: skip
    peaks = device_peaks(torch.cuda.get_device_name(device) if device.type == "cuda" else "")
    if peaks:
        entry["mfu_datasheet"] = achieved / peaks[0]
    if ceilings:
        entry["mfu_measured_peak"] = achieved / ceilings["matmul_bf16_flops"]
    return entry


def time_sampling(sizes: dict, batch: int, graph: bool, compiled: bool, device,
                  ceilings: dict) -> dict:  # fmt: skip
    """Seconds per batch of ``batch`` images (1,024 tokens each), the second of two runs."""
    config = DALLEConfig(**sizes)
    model = build(config, device, False, False).to(torch.bfloat16).eval()
    text = torch.randint(2, config.text_vocab_size, (batch, config.text_len), device=device)
    runs = []
    for _ in range(2):  # the first also warms up (and records the graph)
        _sync(device)
        start = time.perf_counter()
        sample_image_tokens(model, text, SamplingConfig(), cuda_graph=graph,
                            compile_step=compiled)  # fmt: skip
        _sync(device)
        runs.append(time.perf_counter() - start)
    seconds = runs[-1]
    weight_bytes = 2 * sum(p.numel() for p in model.parameters())
    entry = {"batch": batch, "cuda_graph": graph, "compiled_step": compiled,
             "seconds_per_batch": seconds,
             "seconds_first_run": runs[0], "images_per_s": batch / seconds,
             "tokens_per_s": batch * config.image_tokens / seconds,
             "weight_bytes": weight_bytes}  # fmt: skip
    if ceilings:
        floor = weight_bytes / ceilings["copy_bytes_per_s"] * config.image_tokens
        entry["floor_seconds_per_image"] = floor
        entry["times_the_floor"] = seconds / floor if batch == 1 else None
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="training sequences per GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", default="flex,sdpa,causal")
    parser.add_argument("--sampling", default="1e,1g,16g,64g",
                        help="sampling runs: batch, then e (eager), g (CUDA graph) or c "
                             "(compiled step in a CUDA graph)")  # fmt: skip
    parser.add_argument("--eager", action="store_true", help="do not compile the blocks")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on CPU")
    parser.add_argument("--out", type=Path, help="append each result as a JSON line")
    args = parser.parse_args()
    rank = distributed.init_distributed()
    if args.smoke:
        device = torch.device("cpu")
        sizes = dict(text_vocab_size=64, text_len=8, image_vocab_size=32, image_grid=4,
                     width=64, layers=4, heads=2, conv_kernel=3)  # fmt: skip
        args.eager = True
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        sizes = dict(width=args.width, layers=args.layers, heads=args.heads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    ceilings = measured_ceilings(device)
    header = {"device": name, "gpus": rank.world_size, "torch": torch.__version__, **ceilings}

    def record(entry: dict) -> None:
        if not rank.is_main:
            return
        line = json.dumps({**header, **entry})
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")

    # FlexAttention has no backward pass on CPU: the smoke run skips it.
    variants = [v for v in args.variants.split(",") if v and not (args.smoke and v == "flex")]
    for variant in variants:
        try:
            record(time_training(variant, sizes, args, device, rank, ceilings))
        except Exception as error:  # one variant failing must not lose the others
            record({"variant": variant, "error": repr(error)[:2000]})
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not rank.enabled:
        for run in filter(None, args.sampling.split(",")):
            batch, graph, compiled = int(run[:-1]), run[-1] in "gc", run[-1] == "c"
            try:
                record({"sampling": time_sampling(sizes, batch, graph, compiled, device,
                                                  ceilings)})  # fmt: skip
            except Exception as error:
                record({"sampling": {"batch": batch, "cuda_graph": graph,
                                     "error": repr(error)[:2000]}})  # fmt: skip
                traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if rank.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
