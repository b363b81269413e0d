# The modern recipe at nanoGPT's CPU quick-start shape: val loss 1.88 in 450 iterations, where nanoGPT's recipe
# needs 1500 (benchmarks/time_to_loss.py; README "The modern recipe"):
#   nanogpt-ray prepare shakespeare_char
#   nanogpt-ray train configs/train_modern_shakespeare_char_cpu.py

out_dir = 'out-modern-shakespeare-char-cpu'
eval_interval = 50
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
wandb_log = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

arch = 'modern'  # rotary, QK-norm, ReLU², RMSNorm, untied zero-init head, logit soft-cap
optimizer = 'muon'  # Muon for the blocks' matrices, AdamW for embeddings and head
learning_rate = 4e-3  # AdamW's; from the benchmark's sweep
muon_lr = 0.02
max_iters = 500  # the schedule is planned for the run: it anneals by 500
lr_decay_iters = 500
min_lr = 4e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False
dtype = 'float32'
num_workers = 1
use_gpu = False
