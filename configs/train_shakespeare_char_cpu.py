# A small character-level Shakespeare model that trains on CPUs in a minute or two (the README demo):
#   nanogpt-ray prepare shakespeare_char
#   nanogpt-ray train configs/train_shakespeare_char_cpu.py
# Two Ray Train workers (DDP over gloo) on two CPU cores; the loss starts at ln(65) ~ 4.17 and falls.

out_dir = 'out-shakespeare-char-cpu'
eval_interval = 100  # three evaluations (and checkpoints) in the run
eval_iters = 20  # a quick estimate; 200 (nanoGPT's) would take longer than the training
log_interval = 50  # each log line is a ray.train.report, a barrier across workers

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 2  # global micro-steps per iteration: one per worker
batch_size = 12
block_size = 64  # context of up to 64 previous characters

# a tiny GPT, small enough for a CPU
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3  # tiny networks can afford a high learning rate
max_iters = 300
lr_decay_iters = 300  # make equal to max_iters usually
min_lr = 1e-4  # learning_rate / 10 usually
beta2 = 0.99  # few tokens per iteration
warmup_iters = 20

# CPU: no torch.compile (it takes longer to compile than to train), plain float32
device = 'cpu'
compile = False
dtype = 'float32'

# Ray: two CPU workers, no GPUs even where the cluster has some
num_workers = 2
use_gpu = False
