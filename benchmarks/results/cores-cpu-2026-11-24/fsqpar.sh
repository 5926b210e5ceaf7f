cd /work/main
F="--config configs/fsq-shapes-demo.yaml loop.max_minutes=0 loop.schedule_clock=steps loop.eval_every=100000 loop.checkpoint_every=100000"
C="--config configs/clip-shapes-demo.yaml --tokenizer /work/runs/demo-s12/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.eval_every=100000 loop.checkpoint_every=100000"
rm -rf /work/runs/f-*
echo "== fsq alone 2 threads"; .venv/bin/dalle train-image-tokenizer --out /work/runs/f-2 $F loop.steps=500 loop.threads=2 2>&1 | grep -E "img/s" | tail -2
echo "== fsq 1 thread beside clip 1 thread"
.venv/bin/dalle train-clip --out /work/runs/f-c $C loop.steps=700 loop.threads=1 > /work/runs/f-c.log 2>&1 &
.venv/bin/dalle train-image-tokenizer --out /work/runs/f-1 $F loop.steps=500 loop.threads=1 2>&1 | grep -E "img/s" | tail -2
wait; grep img/s /work/runs/f-c.log | tail -2
