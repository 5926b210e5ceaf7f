cd /work/main
T="--config configs/dalle-shapes-demo.yaml --data outputs/demo/image_tokens/tokens-{000000..000002}.tar --image-tokenizer outputs/demo/image_tokenizer --tokenizer outputs/demo/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.eval_every=100000 loop.checkpoint_every=100000"
C="--config configs/clip-shapes-demo.yaml --tokenizer outputs/demo/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.eval_every=100000 loop.checkpoint_every=100000"
rm -rf /work/runs/p-*
echo "== clip alone 2 threads"; .venv/bin/dalle train-clip --out /work/runs/p-c2 $C loop.steps=400 loop.threads=2 2>&1 | grep -E "img/s" | tail -2
echo "== transformer alone 1 thread"; .venv/bin/dalle train --out /work/runs/p-t1 $T loop.steps=400 loop.threads=1 2>&1 | grep -E "img/s" | tail -2
echo "== clip alone 1 thread"; .venv/bin/dalle train-clip --out /work/runs/p-c1 $C loop.steps=400 loop.threads=1 2>&1 | grep -E "img/s" | tail -2
echo "== both at once, 1 thread each"
.venv/bin/dalle train --out /work/runs/p-tb $T loop.steps=600 loop.threads=1 > /work/runs/p-tb.log 2>&1 &
.venv/bin/dalle train-clip --out /work/runs/p-cb $C loop.steps=400 loop.threads=1 > /work/runs/p-cb.log 2>&1
wait
grep img/s /work/runs/p-tb.log | tail -3; grep img/s /work/runs/p-cb.log | tail -3
