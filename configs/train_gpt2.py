# Train GPT-2 (124M) on OpenWebText, nanoGPT's config/train_gpt2.py.
# nanoGPT runs it on one node of 8x A100 40GB and reaches a loss of ~2.85 in about 5 days:
#   nanogpt-ray train configs/train_gpt2.py --num_workers=8

wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# these make the total batch size ~0.5M tokens:
# 12 batch size * 1024 block size * 40 grad accum = 491,520 tokens per iteration, for any num_workers
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8  # global micro-steps: 5 per worker on 8 workers

# this makes the total number of tokens 300B
max_iters = 600000
lr_decay_iters = 600000

# eval stuff
eval_interval = 1000
eval_iters = 200
log_interval = 10  # every log line is a ray.train.report, so not every step

# weight decay
weight_decay = 1e-1
