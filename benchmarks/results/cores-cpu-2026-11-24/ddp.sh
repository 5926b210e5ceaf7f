cd /work/main
T="--config configs/dalle-shapes-demo.yaml --data outputs/demo/image_tokens/tokens-{000000..000002}.tar --image-tokenizer outputs/demo/image_tokenizer --tokenizer outputs/demo/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.eval_every=100000 loop.checkpoint_every=100000"
rm -rf /work/runs/d-*
echo "== transformer 2 ranks x 1 thread"; OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc-per-node 2 -m dalle train --out /work/runs/d-t $T loop.steps=400 loop.threads=1 2>&1 | grep -E "img/s|rror" | tail -3
C="--config configs/clip-shapes-demo.yaml --tokenizer outputs/demo/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.eval_every=100000 loop.checkpoint_every=100000"
echo "== clip 2 ranks x 1 thread"; OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc-per-node 2 -m dalle train-clip --out /work/runs/d-c $C loop.steps=400 loop.threads=1 2>&1 | grep -E "img/s|rror" | tail -3
