# A small Ray Tune sweep on character-level Shakespeare: 2 learning rates x 2 model sizes = 4 trials,
# ASHA stopping the poor ones early. Finishes in about two minutes on 2 CPUs:
#   nanogpt-ray prepare shakespeare_char
#   nanogpt-ray tune configs/sweep_shakespeare_char_cpu.py
# Results (table, results.csv, best_config.py, plots/, tensorboard/) land in sweeps/shakespeare_char_cpu/.

base_config = 'configs/train_shakespeare_char_cpu.py'  # every trial starts from the CPU training config
train_overrides = {
    'max_iters': 200,  # short trials: ASHA compares them at iterations 50 and 100
    'lr_decay_iters': 200,
    'eval_interval': 50,
    'eval_iters': 10,
    'log_interval': 50,
    'always_save_checkpoint': False,  # keep the checkpoint of the best eval only
}

learning_rates = [3e-4, 3e-3]  # grid over lr (or set lr_min/lr_max for log-uniform samples)
model_sizes = ['tiny', 'mini']  # presets: n_layer/n_head/n_embd together (2/2/64 and 4/4/128)

scheduler = 'asha'  # early stopping on val_loss at eval points
grace_period = 50  # iterations every trial runs before ASHA may stop it
reduction_factor = 2  # keep the better half at each rung

workers_per_trial = 1  # one Ray Train worker per trial, so two trials share the 2 CPUs
cpus_per_worker = 0.99  # +0.01 for each trial's driver: two trials fit on 2 CPUs (1.0 would fit only one)
max_concurrent_trials = 0  # 0: as many as the cluster holds

storage_path = 'sweeps'
sweep_name = 'shakespeare_char_cpu'
