"""jobs/*.yaml run the same entrypoint as the CLI: `python -m jobs.train <config files> --key=value`."""

import json
import os
import pathlib
import shlex

import jsonschema
import pytest
import ray
import yaml

from nanogpt_ray.config import TrainConfig, load_config, split_args

JOBS = pathlib.Path(__file__).resolve().parents[2] / "jobs"


def _check_entrypoint(entrypoint: str) -> TrainConfig:
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "jobs.train"], entrypoint
    files, overrides = split_args(argv[3:])
    assert files, "the entrypoint names a config file"
    assert all(f.startswith("configs/") and f.endswith(".py") for f in files)
    existing = [f for f in files if (JOBS.parent / f).exists()]  # configs may land separately; keys are checked anyway
    return load_config(TrainConfig, [str(JOBS.parent / f) for f in existing], overrides, absolute_paths=False)


def test_rayjob_manifest_runs_the_train_entrypoint():
    manifest = yaml.safe_load((JOBS / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    cfg = _check_entrypoint(manifest["spec"]["entrypoint"])
    assert cfg.num_workers == manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    assert cfg.storage_path.startswith("s3://")  # several nodes need shared checkpoint storage
    runtime_env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in runtime_env["env_vars"]


def test_cluster_yaml_is_a_valid_ray_up_config_with_the_train_entrypoint():
    config = yaml.safe_load((JOBS / "cluster.yaml").read_text())
    schema = json.loads((pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    cfg = _check_entrypoint(config["metadata"]["entrypoint"])
    assert cfg.storage_path.startswith("s3://")
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


def test_runtime_env_keeps_data_outputs_and_git_out_of_the_upload():
    runtime_env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    for pattern in (".git", ".venv", "data/*/*.bin", "out*"):
        assert pattern in runtime_env["excludes"]


def test_job_entrypoint_rejects_a_bad_key_in_one_line(capfd):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--learning_rat=1e-3"], cwd=JOBS.parent,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'learning_rate'" in proc.stderr


@pytest.mark.parametrize("name", ["rayjob.yaml", "cluster.yaml"])
def test_manifests_keep_the_dashboard_off_public_interfaces(name):
    text = (JOBS / name).read_text()
    assert "0.0.0.0" not in text


# KubeRay's submission modes and whether the submitter reaches a dashboard bound to the head's loopback:
# K8sJobMode (the default) and HTTPMode submit from outside the head pod; SidecarMode submits from a
# container in it; InteractiveMode waits for a person to submit (through kubectl port-forward).
SUBMITTERS_THAT_REACH_LOOPBACK = {"SidecarMode", "InteractiveMode"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def test_a_loopback_dashboard_is_paired_with_a_submission_mode_that_reaches_it():
    manifests = [m for m in yaml.safe_load_all((JOBS / "rayjob.yaml").read_text()) if m and m.get("kind") == "RayJob"]
    assert manifests
    for manifest in manifests:
        spec = manifest["spec"]
        head_params = spec["rayClusterSpec"]["headGroupSpec"].get("rayStartParams", {})
        host = str(head_params.get("dashboard-host", "127.0.0.1"))  # ray start binds 127.0.0.1 by default
        mode = spec.get("submissionMode", "K8sJobMode")
        if host in LOOPBACK_HOSTS:
            assert mode in SUBMITTERS_THAT_REACH_LOOPBACK, (
                f"{manifest['metadata']['name']}: dashboard on {host} but submissionMode {mode} submits from outside the head pod")
    assert manifests[0]["spec"]["submissionMode"] == "SidecarMode"


@pytest.mark.parametrize("path, key", [("serve_config.yaml", None), ("rayservice.yaml", "serveConfigV2")])
def test_serve_configs_deploy_the_serve_entrypoint_with_valid_keys(path, key, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from nanogpt_ray.cli import serve_app
    from nanogpt_ray.config import ServeConfig

    manifest = yaml.safe_load((JOBS / path).read_text())
    config = yaml.safe_load(manifest["spec"][key]) if key else manifest
    ServeDeploySchema.parse_obj(config)  # what `serve deploy` / KubeRay validate
    (application,) = config["applications"]
    assert application["import_path"] == "jobs.serve:app"
    args = {k: str(v) for k, v in application["args"].items()}  # `serve run ... key=value` passes strings
    cfg = load_config(ServeConfig, [], [f"--{k}={v}" for k, v in args.items()], absolute_paths=False)
    assert cfg.watch and cfg.init_from == "resume"
    os.makedirs(tmp_path / "out", exist_ok=True)
    app = serve_app({**args, "out_dir": str(tmp_path / "out")})  # the builder Serve calls returns an application
    assert type(app).__name__ == "Application"
