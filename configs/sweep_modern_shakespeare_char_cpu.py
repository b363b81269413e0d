# The modern recipe's two learning rates on character-level Shakespeare: arch=modern with Muon for the blocks'
# matrices (muon_lr) and AdamW for embeddings and head (learning_rate). 3 x 3 = 9 trials, ASHA stopping the
# poor ones early:
#   nanogpt-ray prepare shakespeare_char
#   nanogpt-ray tune configs/sweep_modern_shakespeare_char_cpu.py
# Results land in sweeps/modern_shakespeare_char_cpu/ (best_config.py trains the winner).

base_config = 'configs/train_shakespeare_char_cpu.py'  # nanoGPT's CPU quick-start shape: 4 layers, 4 heads, 128 wide
train_overrides = {
    'arch': 'modern',  # rotary, QK-norm, ReLU², RMSNorm, no biases, zero-init untied head, logit soft-cap
    'optimizer': 'muon',
    'max_iters': 300,
    'lr_decay_iters': 300,
    'eval_interval': 50,
    'eval_iters': 10,
    'log_interval': 50,
    'always_save_checkpoint': False,
}

learning_rates = [2e-3, 4e-3, 8e-3]  # AdamW's lr (embeddings, head); min_lr follows at the base's ratio
search_space = {'muon_lr': [0.02, 0.05, 0.1]}  # Muon's lr (the blocks' 2-D weights); the schedule scales both

scheduler = 'asha'
grace_period = 100  # Muon's early loss drop is steep: compare trials only once it has settled a little
reduction_factor = 2

workers_per_trial = 1
cpus_per_worker = 0.99  # +0.01 for each trial's driver: two trials fit on 2 CPUs
max_concurrent_trials = 0

storage_path = 'sweeps'
sweep_name = 'modern_shakespeare_char_cpu'
