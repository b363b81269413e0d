# Evaluate the pretrained OpenAI gpt2-xl on OpenWebText, nanoGPT's config/eval_gpt2_xl.py:
#   nanogpt-ray train configs/eval_gpt2_xl.py
# n_layer/n_head/n_embd come from the checkpoint, not from this file.
batch_size = 8
eval_iters = 500  # use more iterations to get good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
