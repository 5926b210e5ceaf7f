cd /work/main
C="--config configs/clip-shapes-demo.yaml --tokenizer /work/runs/demo-s12/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.steps=300 loop.eval_every=100000 loop.checkpoint_every=100000 loop.threads=1"
for k in math auto; do
  rm -rf /work/runs/kc-$k
  .venv/bin/dalle train-clip --out /work/runs/kc-$k $C loop.attention_kernel=$k 2>&1 | grep -E "img/s|trained" | tail -2
done
