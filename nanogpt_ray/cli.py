"""`nanogpt-ray prepare|train|tune|sample|serve|bench|export`: nanoGPT's argument syntax for every command.

    nanogpt-ray train configs/train_shakespeare_char.py --batch_size=32 --num_workers=2

Bare arguments are config files (run in order), `--key=value` flags override them. Mistakes a person can
fix end in one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys

from .config import (
    MODEL_PRESETS,
    BenchConfig,
    ConfigError,
    ExportConfig,
    PrepareConfig,
    SampleConfig,
    ServeConfig,
    SweepConfig,
    TrainConfig,
    UserError,
    field_doc,
    load_config,
    missing_extra,
    split_args,
)

USAGE = """usage: nanogpt-ray <command> [config files] [--key=value ...]

commands:
  prepare   tokenize a corpus into <data_root>/<dataset>/{train,val}.bin and meta.json, in parallel on Ray
  train     train a GPT on Ray Train (DDP over every worker), checkpoints to out_dir and storage_path
  tune      sweep learning rate and model size with Ray Tune
  sample    generate text from a checkpoint or GPT-2 (batch files of prompts on Ray actors)
  serve     OpenAI-compatible /v1/completions for a checkpoint or GPT-2 on Ray Serve (continuous batching)
  bench     time training steps: ms/iter, tokens/s, MFU, memory (one node, every node, or worker scaling)
  export    write a checkpoint as a Hugging Face GPT2LMHeadModel directory

`nanogpt-ray <command> --help` lists every key of that command with its default and meaning.
"""


def format_help(cls, command: str, summary: str, footer: str = "") -> str:
    lines = [f"usage: nanogpt-ray {command} [config files] [--key=value ...]", "", summary, "", "keys (default: meaning):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        doc = field_doc(cls, f.name)
        lines.append(f"  --{f.name}={default!r}" + (f"  {doc}" if doc else ""))
    return "\n".join(lines + ([("\n" + footer)] if footer else []))


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def load(cls, argv: list[str]):
    files, overrides = split_args(argv)
    return load_config(cls, files, overrides)


# ---------------------------------------------------------------------------- commands

def cmd_prepare(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help(PrepareConfig, "prepare <dataset>", "Tokenize a corpus into train.bin, val.bin and meta.json."))
        return 0
    files, overrides = split_args(argv)
    # nanoGPT-style: the first bare argument naming a dataset is the dataset, the rest are config files
    if files and not files[0].endswith(".py"):
        overrides = [f"--dataset={files[0]}"] + overrides
        files = files[1:]
    cfg = load_config(PrepareConfig, files, overrides)
    from .cluster.prepare import prepare  # Ray only where cfg.parallel asks for it

    prepare(cfg)
    return 0


def cmd_train(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help(TrainConfig, "train", "Train a GPT with nanoGPT's loop under Ray Train (TorchTrainer + DDP).\n"
                                                "One worker with no cluster named (no --address, RAY_ADDRESS or Ray job) "
                                                "and no --storage_path runs in Ray Train's local mode: in this process, "
                                                "no Ray cluster; under torchrun, DDP over its processes. --num_workers=2, "
                                                "--address, min/max_workers or --storage_path run Ray Train workers; "
                                                "--num_workers=0 asks for local mode. Local mode has no worker restarts "
                                                "(rerun with --init_from=resume) and copies no checkpoints to storage_path."))
        return 0
    cfg = load(TrainConfig, argv)  # before importing Ray, so a typo is reported at once
    from .cluster.train import launch

    launch(cfg)
    return 0


def cmd_tune(argv: list[str]) -> int:
    if wants_help(argv):
        presets = ", ".join(f"{k} ({v['n_layer']}/{v['n_head']}/{v['n_embd']})" for k, v in MODEL_PRESETS.items())
        print(format_help(SweepConfig, "tune", "Sweep learning rate and model size with Ray Tune (ASHA early stopping); "
                                               "each trial is a Ray Train run; any training key given as a flag "
                                               "(--data_root=/data) applies to every trial.", footer=f"model presets: {presets}"))
        return 0
    from .sweep import load_sweep

    sweep = load_sweep(argv)
    from .cluster.tune import run_sweep

    report = run_sweep(sweep)
    if report is None:  # --dry_run
        return 0
    return 0 if report.rows and report.rows[0]["best_val_loss"] is not None else 1


def cmd_sample(argv: list[str]) -> int:
    if wants_help(argv):
        from .batch_sampling import PROMPTS_SCHEMA

        print(format_help(SampleConfig, "sample", "Sample from a checkpoint (init_from=resume) or GPT-2; "
                                                  "--prompts=FILE --output=FILE samples a whole file on Ray actors.",
                          footer=PROMPTS_SCHEMA))
        return 0
    cfg = load(SampleConfig, argv)
    if cfg.dry_run:
        from .plan import sample_plan

        print(sample_plan(cfg))
    elif cfg.prompts:
        from .cluster.sampling import sample_file

        sample_file(cfg)
    else:
        from .sample import sample_main

        sample_main(cfg)
    return 0


def cmd_serve(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help(ServeConfig, "serve", "Serve a checkpoint (init_from=resume) or GPT-2 as OpenAI's /v1/completions "
                                                "(and /v1/models, /health) on Ray Serve; --watch swaps in newer checkpoints.",
                          footer="then: openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-')"
                                 ".completions.create(model=..., prompt=...)"))
        return 0
    cfg = load(ServeConfig, argv)  # before importing Ray, so a typo is reported at once
    if cfg.dry_run:
        from .plan import serve_plan

        print(serve_plan(cfg))
        return 0
    from .checkpoint import load_model

    load_model(cfg.init_from, cfg.out_dir, cfg.ckpt_path)  # a missing checkpoint fails here in one line, not in a replica
    from .cluster.serve import run_server

    run_server(cfg)
    return 0


def serve_app(args: dict):
    """The Serve application for `serve run jobs.serve:app key=value ...` and a Serve config file's `args`:
    the same keys as `nanogpt-ray serve`; `config` names a config file."""
    args = dict(args or {})
    files = [args.pop("config")] if args.get("config") else []
    cfg = load_config(ServeConfig, files, [f"--{k}={v}" for k, v in args.items()])
    from .cluster.serve import build_app

    return build_app(cfg)


def cmd_bench(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help(BenchConfig, "bench", "Time training steps: ms/iter, tokens/s, MFU and peak memory."))
        return 0
    from .bench import BenchError, run_bench, write_json

    cfg = load(BenchConfig, argv)
    if cfg.cluster and cfg.scaling:
        raise BenchError("pass either --cluster=True (every node) or --scaling=True (1..max_workers workers), not both")
    if cfg.cluster:
        from .cluster.bench import bench_cluster

        rows = bench_cluster(cfg)
    elif cfg.scaling:
        from .cluster.bench import bench_scaling

        rows = bench_scaling(cfg)
    else:
        rows = [run_bench(cfg)]
    if cfg.json:
        write_json(cfg.json, rows)
    return 0


def cmd_export(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help(ExportConfig, "export", "Write a checkpoint as a Hugging Face GPT2LMHeadModel directory."))
        return 0
    import os

    from .checkpoint import load_model
    from .hf import export_hf
    from .sample import resolve_tokenizer

    cfg = load(ExportConfig, argv)
    hf_dir = cfg.hf_dir or os.path.join(cfg.out_dir, "hf")
    if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):  # checked first: nothing loaded, nothing written
        raise ConfigError(f"--hf_dir={hf_dir} is a file; give a directory (new, or one to write the model into)")
    model, ckpt = load_model(cfg.init_from, cfg.out_dir, cfg.ckpt_path)
    tokenizer = resolve_tokenizer(ckpt, cfg.init_from, cfg.data_root)  # the directory carries its tokenizer
    export_hf(model, hf_dir, tokenizer)
    print(f"wrote a Hugging Face GPT2LMHeadModel with its {tokenizer.kind} tokenizer to {hf_dir}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "tune": cmd_tune, "sample": cmd_sample,
            "serve": cmd_serve,
            "bench": cmd_bench, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(f"nanogpt-ray: unknown command {command!r}; {hint}use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest) or 0
    except (UserError, FileNotFoundError) as e:
        print(f"nanogpt-ray {command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # an optional extra (transformers for export, matplotlib for plots) that is not installed: name the
        # extra; any other missing module is a broken install and keeps its traceback
        error = missing_extra(e, f"nanogpt-ray {command}")
        if error is None:
            raise
        print(f"nanogpt-ray {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nanogpt-ray {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
