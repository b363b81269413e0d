"""Config loading: files in configs/, defaults < files < flags, coercion, validation, one-line errors."""

import os
import pathlib
import runpy

import pytest

from nanogpt_ray.config import PATH_KEYS, ConfigError, SampleConfig, SweepConfig, TrainConfig, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.py"))
NANOGPT_CONFIGS = ("train_gpt2.py", "train_shakespeare_char.py", "finetune_shakespeare.py", "eval_gpt2.py",
                   "eval_gpt2_medium.py", "eval_gpt2_large.py", "eval_gpt2_xl.py", "train_shakespeare_char_cpu.py")


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------- the files in configs/


def test_configs_folder_has_nanogpts_files():
    names = {path.name for path in CONFIG_FILES}
    assert set(NANOGPT_CONFIGS) <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads_with_its_values(path):
    # sweep_* files configure Ray Tune; train_*, finetune_* and eval_* are training configs
    cls = SweepConfig if path.name.startswith("sweep_") else TrainConfig
    cfg = load_config(cls, [str(path)])
    assert isinstance(cfg, cls)
    # every value the file sets arrives in the config (paths made absolute)
    namespace = {k: v for k, v in runpy.run_path(str(path)).items() if not k.startswith("_") and k != "time"}
    assert namespace, f"{path.name} sets nothing"
    for key, value in namespace.items():
        expected = os.path.abspath(value) if key in PATH_KEYS and value else value
        assert getattr(cfg, key) == expected, key


def test_nanogpt_values_in_the_shipped_configs():
    gpt2 = load_config(TrainConfig, [str(CONFIGS / "train_gpt2.py")])
    assert (gpt2.batch_size, gpt2.block_size, gpt2.gradient_accumulation_steps) == (12, 1024, 40)
    assert gpt2.tokens_per_iter() == 491_520

    char = load_config(TrainConfig, [str(CONFIGS / "train_shakespeare_char.py")])
    assert (char.n_layer, char.n_head, char.n_embd, char.block_size, char.dropout) == (6, 6, 384, 256, 0.2)
    assert char.always_save_checkpoint is False and char.dataset == "shakespeare_char"

    finetune = load_config(TrainConfig, [str(CONFIGS / "finetune_shakespeare.py")])
    assert finetune.init_from == "gpt2-xl" and finetune.decay_lr is False and finetune.learning_rate == 3e-5

    for size in ("", "_medium", "_large", "_xl"):
        cfg = load_config(TrainConfig, [str(CONFIGS / f"eval_gpt2{size}.py")])
        assert cfg.eval_only is True and cfg.init_from == "gpt2" + size.replace("_", "-")


def test_cpu_demo_config_is_small_and_fits_two_cpu_workers():
    cfg = load_config(TrainConfig, [str(CONFIGS / "train_shakespeare_char_cpu.py")])
    assert (cfg.device, cfg.dtype, cfg.compile) == ("cpu", "float32", False)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (4, 4, 128, 64, 12)
    assert cfg.lr_decay_iters == cfg.max_iters <= 500
    assert cfg.gradient_accumulation_steps % 2 == 0
    assert load_config(TrainConfig, [str(CONFIGS / "train_shakespeare_char_cpu.py")], ["--num_workers=2"]).num_workers == 2


# ---------------------------------------------------------------------------- layers and nanoGPT syntax


def test_precedence_is_defaults_then_files_then_flags(tmp_path):
    first = write(tmp_path, "batch_size = 32\nlearning_rate = 1e-3\n", "first.py")
    second = write(tmp_path, "batch_size = 48\n", "second.py")

    assert load_config(TrainConfig).batch_size == 12
    assert load_config(TrainConfig, [first]).batch_size == 32
    assert load_config(TrainConfig, [first, second]).batch_size == 48
    cfg = load_config(TrainConfig, [first, second], ["--batch_size=7"])
    assert cfg.batch_size == 7
    assert cfg.learning_rate == 1e-3  # from the file, not overridden
    assert cfg.max_iters == 600000  # untouched default


def test_nanogpt_style_file_loads_unchanged(tmp_path):
    path = write(tmp_path, (
        "import time\n"
        "out_dir = 'out-shakespeare'\n"
        "wandb_run_name = 'ft-' + str(time.time())  # expressions run, as with nanoGPT's exec\n"
        "gradient_accumulation_steps = 5 * 8\n"
        "batch_size = batch_size * 2  # earlier values are visible to the file\n"
    ))
    cfg = load_config(TrainConfig, [path])
    assert cfg.gradient_accumulation_steps == 40
    assert cfg.batch_size == 24
    assert cfg.wandb_run_name.startswith("ft-")
    assert cfg.out_dir == os.path.abspath("out-shakespeare")


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, [str(tmp_path / "nope.py")])


def test_unknown_key_in_a_file_names_the_closest_key(tmp_path):
    path = write(tmp_path, "learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'.*did you mean 'learning_rate'"):
        load_config(TrainConfig, [path])


def test_unknown_key_in_a_flag_names_the_closest_key():
    with pytest.raises(ConfigError, match="unknown config key 'n_embed'.*did you mean 'n_embd'") as info:
        load_config(TrainConfig, [], ["--n_embed=128"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown config key 'zzz'"):
        load_config(TrainConfig, [], ["--zzz=1"])


def test_flag_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--key=value"):
        load_config(TrainConfig, [], ["--compile"])


# ---------------------------------------------------------------------------- coercion


def test_flags_are_coerced_to_the_field_type():
    cfg = load_config(TrainConfig, [], ["--learning_rate=1", "--compile=False", "--dropout=0", "--max_iters=1e3",
                                        "--decay_lr=0", "--out_dir=123"], absolute_paths=False)
    assert cfg.learning_rate == 1.0 and type(cfg.learning_rate) is float
    assert cfg.compile is False
    assert cfg.dropout == 0.0 and type(cfg.dropout) is float
    assert cfg.max_iters == 1000 and type(cfg.max_iters) is int
    assert cfg.decay_lr is False
    assert cfg.out_dir == "123"  # strings are verbatim, not parsed into the int 123


def test_optional_fields_accept_none():
    assert load_config(SampleConfig, [], ["--top_k=None"]).top_k is None
    assert load_config(SampleConfig, [], ["--top_k=5"]).top_k == 5
    assert load_config(SampleConfig, [], ["--top_p=0.9"]).top_p == 0.9


@pytest.mark.parametrize("flag, key", [("--batch_size=abc", "batch_size"), ("--batch_size=2.5", "batch_size"),
                                       ("--compile=maybe", "compile"), ("--learning_rate=fast", "learning_rate"),
                                       ("--max_iters=None", "max_iters")])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(flag, key):
    with pytest.raises(ConfigError, match=key):
        load_config(TrainConfig, [], [flag])


def test_overrides_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    cfg = load_config(TrainConfig, [], [f"--out_dir={payload}"], absolute_paths=False)
    assert cfg.out_dir == payload
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(TrainConfig, [], [f"--batch_size={payload}"])
    with pytest.raises(ConfigError, match="top_k"):
        load_config(SampleConfig, [], [f"--top_k={payload}"])
    assert not marker.exists()


# ---------------------------------------------------------------------------- validation


def test_n_embd_must_divide_by_n_head():
    with pytest.raises(ConfigError, match="n_embd=100.*n_head=3"):
        load_config(TrainConfig, [], ["--n_embd=100", "--n_head=3"])
    assert load_config(TrainConfig, [], ["--n_embd=99", "--n_head=3"]).n_embd == 99


def test_unknown_init_from_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="init_from='gpt3'"):
        load_config(TrainConfig, [], ["--init_from=gpt3"])
    for ok in ("scratch", "resume", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert load_config(TrainConfig, [], [f"--init_from={ok}"]).init_from == ok
    (tmp_path / "my-gpt2").mkdir()  # a local save_pretrained directory is accepted, made absolute
    assert load_config(TrainConfig, [], ["--init_from=my-gpt2"]).init_from == str(tmp_path / "my-gpt2")
    with pytest.raises(ConfigError, match="init_from='scratch'"):
        load_config(SampleConfig, [], ["--init_from=scratch"])  # sampling needs trained weights


def test_gradient_accumulation_must_divide_by_num_workers():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3.*num_workers=2"):
        load_config(TrainConfig, [], ["--gradient_accumulation_steps=3", "--num_workers=2"])
    cfg = load_config(TrainConfig, [], ["--gradient_accumulation_steps=4", "--num_workers=2"])
    assert cfg.micro_steps_per_worker() == 2


@pytest.mark.parametrize("flag, key", [("--temperature=0", "temperature"), ("--temperature=-1", "temperature"),
                                       ("--top_k=0", "top_k"), ("--top_p=0", "top_p"), ("--top_p=1.5", "top_p")])
def test_sampling_values_out_of_range_are_errors(flag, key):
    with pytest.raises(ConfigError, match=key):
        load_config(SampleConfig, [], [flag])


def test_bad_device_and_dtype_are_errors():
    with pytest.raises(ConfigError, match="device="):
        load_config(TrainConfig, [], ["--device=tpu"])
    with pytest.raises(ConfigError, match="dtype="):
        load_config(TrainConfig, [], ["--dtype=float8"])
    assert load_config(TrainConfig, [], ["--device=cuda:1"]).device == "cuda:1"


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, [], ["--out_dir=runs/a", "--data_root=~/datasets"])
    assert cfg.out_dir == str(tmp_path / "runs" / "a")
    assert cfg.data_root == os.path.join(os.path.expanduser("~"), "datasets")
    assert cfg.storage_path == ""  # empty means "derive it", and stays empty
    assert os.path.isabs(cfg.resolved_storage_path())
    sample = load_config(SampleConfig, [], ["--out_dir=out-x"])
    assert sample.out_dir == str(tmp_path / "out-x")
