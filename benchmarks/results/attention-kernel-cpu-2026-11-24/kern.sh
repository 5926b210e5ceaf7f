cd /work/main
D=/work/runs/demo-s12
T="--config configs/dalle-shapes-demo.yaml --data $D/image_tokens/tokens-{000000..000002}.tar --image-tokenizer $D/image_tokenizer --tokenizer $D/tokenizer loop.max_minutes=0 loop.schedule_clock=steps loop.steps=600 loop.eval_every=600 loop.checkpoint_every=600"
for k in math auto; do
  rm -rf /work/runs/k-$k
  /usr/bin/time -f "%e s wall" .venv/bin/dalle train --out /work/runs/k-$k $T loop.attention_kernel=$k 2>&1 | grep -E "img/s|val_loss|wall" | tail -4
done
