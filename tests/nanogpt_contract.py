"""What nanoGPT reads from a ckpt.pt, written down as data (read off nanoGPT's model.py, sample.py and train.py by
hand; none of its code is here). A checkpoint that passes `assert_nanogpt_reads` samples with nanoGPT's sample.py
and, when `resumable`, continues with its `train.py --init_from=resume`."""

from __future__ import annotations

NANOGPT_GPTCONFIG_KEYS = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias"}
"""The fields of nanoGPT's GPTConfig: sample.py calls GPTConfig(**checkpoint['model_args']), so no other key may be
in model_args."""
NANOGPT_RESUME_KEYS = {"model", "optimizer", "model_args", "iter_num", "best_val_loss"}
"""What train.py --init_from=resume reads (sample.py reads model and model_args, and config['dataset'] if present)."""
NANOGPT_RESUME_MODEL_ARGS = {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size"}
"""The model_args train.py copies from the checkpoint when it resumes."""
NANOGPT_PREFIX_STRIPPED = "_orig_mod."
"""The only state-dict prefix nanoGPT removes before load_state_dict(strict=True)."""


def nanogpt_parameters(args: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of nanoGPT's GPT's parameters in named_parameters() order (lm_head.weight is tied to
    transformer.wte.weight, so named_parameters lists it once, as the embedding); nanoGPT keeps no buffers
    when scaled_dot_product_attention exists."""
    C, V, T, bias = args["n_embd"], args["vocab_size"], args["block_size"], args["bias"]

    def linear(name, n_in, n_out):
        return [(f"{name}.weight", (n_out, n_in))] + ([(f"{name}.bias", (n_out,))] if bias else [])

    def norm(name):
        return [(f"{name}.weight", (C,))] + ([(f"{name}.bias", (C,))] if bias else [])

    params = [("transformer.wte.weight", (V, C)), ("transformer.wpe.weight", (T, C))]
    for i in range(args["n_layer"]):
        h = f"transformer.h.{i}"
        params += (norm(f"{h}.ln_1") + linear(f"{h}.attn.c_attn", C, 3 * C) + linear(f"{h}.attn.c_proj", C, C)
                   + norm(f"{h}.ln_2") + linear(f"{h}.mlp.c_fc", C, 4 * C) + linear(f"{h}.mlp.c_proj", 4 * C, C))
    return params + norm("transformer.ln_f")


def nanogpt_state_dict_shapes(args: dict) -> dict[str, tuple[int, ...]]:
    """The keys and shapes nanoGPT's load_state_dict(strict=True) wants: the parameters plus the tied head."""
    return dict(nanogpt_parameters(args), **{"lm_head.weight": (args["vocab_size"], args["n_embd"])})


def assert_nanogpt_reads(ckpt: dict, resumable: bool = True) -> None:
    """nanoGPT's sample.py can build and load this checkpoint's model; with `resumable`, its train.py can also
    load the optimizer (configure_optimizers: two AdamW groups, decay = the >= 2-D parameters, in
    named_parameters order) and continue from iter_num."""
    args = ckpt["model_args"]
    assert set(args) == NANOGPT_GPTCONFIG_KEYS, sorted(set(args) ^ NANOGPT_GPTCONFIG_KEYS)
    assert set(ckpt) >= NANOGPT_RESUME_KEYS - ({"optimizer"} if not resumable else set())
    state = {k.removeprefix(NANOGPT_PREFIX_STRIPPED): tuple(v.shape) for k, v in ckpt["model"].items()}
    assert state == nanogpt_state_dict_shapes(args), sorted(set(state) ^ set(nanogpt_state_dict_shapes(args)))
    if not resumable:
        return
    assert isinstance(ckpt["iter_num"], int) and isinstance(ckpt["best_val_loss"], float)
    params = nanogpt_parameters(args)
    decay = [shape for _, shape in params if len(shape) >= 2]
    no_decay = [shape for _, shape in params if len(shape) < 2]
    groups = ckpt["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [len(decay), len(no_decay)]
    assert groups[0]["params"] + groups[1]["params"] == list(range(len(params)))
    assert groups[1]["weight_decay"] == 0.0
    for index, shape in enumerate(decay + no_decay):  # AdamW's moments line up with nanoGPT's parameter order
        moments = ckpt["optimizer"]["state"][index]
        assert tuple(moments["exp_avg"].shape) == tuple(moments["exp_avg_sq"].shape) == shape, (index, shape)
