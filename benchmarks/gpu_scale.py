"""Training MFU, block-sparse FlexAttention against dense masked attention, and sampling
speed against the memory-bandwidth floor, for a ~300M-parameter DALL-E transformer at
the paper's 1,280-token sequence (256 text + 32x32 image tokens) with its sparse layer
schedule (issue 6). Run when a GPU is lent; record the printed JSON in BENCHMARKS.md.

    python benchmarks/gpu_scale.py                       # one GPU
    torchrun --nproc-per-node 8 benchmarks/gpu_scale.py  # FSDP2 over 8 GPUs (training)
    python benchmarks/gpu_scale.py --smoke               # tiny, on CPU: checks the script

Model FLOPs per token follow PaLM's accounting (6 N for the weights plus 6 x layers x
width x attended keys for attention scores and mixing, forward and backward), with the
keys each query actually attends to under the sparse masks, not the dense S^2: MFU then
credits the work the model needs, not work a dense kernel wastes.
"""

from __future__ import annotations

import argparse
import json
import time

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
    return sum(per_layer) / len(per_layer) / (c.sequence_length)


def flops_per_token(model: DALLETransformer, parameters: int) -> float:
    c = model.config
    return 6 * parameters + 6 * c.layers * c.width * attended_keys_per_query(model)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(config: DALLEConfig, device: torch.device, shard: bool, compile_blocks: bool):
    torch.manual_seed(0)
    with torch.device("meta" if shard else device):
        model = DALLETransformer(config)
    plan = ParallelPlan(compile=compile_blocks, shard=shard, compute_dtype=torch.bfloat16)
    return parallelize(model, plan, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="sequences per GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on CPU")
    args = parser.parse_args()
    rank = distributed.init_distributed()
    shard = rank.world_size > 1
    if args.smoke:
        device = torch.device("cpu")
        sizes = dict(text_vocab_size=64, text_len=8, image_vocab_size=32, image_grid=4,
                     width=64, layers=4, heads=2, conv_kernel=3)  # fmt: skip
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        sizes = dict(width=args.width, layers=args.layers, heads=args.heads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict = {"device": name, "gpus": rank.world_size, "torch": torch.__version__,
                     "batch_per_gpu": args.batch}  # fmt: skip
    peaks = device_peaks(name)

    # FlexAttention has no backward pass on CPU: the smoke run times dense attention only.
    for backend in ("sdpa",) if args.smoke else ("sdpa", "flex"):
        config = DALLEConfig(**sizes, attention_backend=backend)
        model = build(config, device, shard, args.compile)
        parameters = sum(p.numel() for p in model.parameters())
        if shard:
            parameters = sum(p.full_tensor().numel() for p in model.parameters())
        text = torch.randint(2, config.text_vocab_size, (args.batch, config.text_len),
                             device=device)  # fmt: skip
        image = torch.randint(0, config.image_vocab_size, (args.batch, config.image_tokens),
                              device=device)  # fmt: skip
        seconds = train_step_time(model, text, image, args.steps, device)
        tokens = args.batch * config.sequence_length * rank.world_size
        achieved = flops_per_token(model, parameters) * tokens / seconds
        entry = {"parameters": parameters, "step_s": seconds, "tokens_per_s": tokens / seconds,
                 "model_tflops_per_gpu": achieved / rank.world_size / 1e12}  # fmt: skip
        if peaks:
            entry["mfu"] = achieved / rank.world_size / peaks[0]
        results[backend] = entry
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "flex" in results:
        results["flex_speedup"] = results["sdpa"]["step_s"] / results["flex"]["step_s"]

    if not shard:
        # Sampling at batch 1: each new token reads every weight once (bf16), so the
        # floor is weight bytes / memory bandwidth per token.
        config = DALLEConfig(**sizes)
        model = build(config, device, False, False).to(torch.bfloat16).eval()
        text = torch.randint(2, config.text_vocab_size, (1, config.text_len), device=device)
        sample_image_tokens(model, text, SamplingConfig())  # warm-up
        _sync(device)
        start = time.perf_counter()
        sample_image_tokens(model, text, SamplingConfig())
        _sync(device)
        per_token = (time.perf_counter() - start) / config.image_tokens
        weight_bytes = 2 * sum(p.numel() for p in model.parameters())
        sampling = {"tokens_per_s": 1 / per_token, "weight_bytes": weight_bytes}
        if peaks:
            floor = weight_bytes / peaks[1]
            sampling["bandwidth_floor_tokens_per_s"] = 1 / floor
            sampling["times_the_floor"] = per_token / floor
        results["sampling_batch1"] = sampling
    if rank.is_main:
        print(json.dumps(results, indent=2))
    if rank.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
