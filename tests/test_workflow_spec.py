"""Workflow YAML: safe loading, typed validation, errors that name the key path."""

import pytest

from pipeline import ConfigError
from workflows.spec import WorkflowConfig, load_workflow


def _write(tmp_path, text):
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def test_minimal_workflow_gets_defaults(tmp_path):
    config = load_workflow(_write(tmp_path, "input: {volume: data/v.zarr}\n"))
    assert config.input.volume_path.name == "v.zarr"
    assert config.compute.scheduler == "local"
    assert config.output.name == "run"


def test_bundled_sample_workflow_is_valid():
    config = load_workflow("workflows/sample.yaml")
    assert config.input.sample is not None
    assert config.input.truth is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("input: {volume: v.zarr}\nsegmnet: {}\n", r"segmnet: unknown key"),
        ("input: {volume: v.zarr}\ncompute: {block_shape: [0, 64, 64]}\n", r"compute.block_shape: .*positive"),
        ("input: {volume: v.zarr}\ncompute: {block_shape: [-8, 64, 64]}\n", r"compute.block_shape"),
        ("input: {volume: v.zarr}\ncompute: {retries: many}\n", r"compute.retries: .*integer"),
        ("input: {volume: v.zarr}\ncompute: {device: tpu}\n", r"compute.device"),
        ("input: {volume: v.zarr}\ncompute: {schedular: local}\n", r"compute.schedular: unknown key"),
        ("output: runs/x\n", r"input: required key is missing"),
        ("input: {}\n", r"exactly one of 'volume'"),
        ("input: {volume: v.zarr, sample: {}}\n", r"exactly one of 'volume'"),
        ("input: {volume: v.zarr\n", r"malformed YAML at line"),
        ("- just\n- a list\n", r"top level must be a mapping"),
    ],
)
def test_bad_workflows_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_workflow(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such workflow file"):
        load_workflow(tmp_path / "nope.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    path = _write(tmp_path, "input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_workflow(path)


def test_model_round_trip():
    config = WorkflowConfig.model_validate({"input": {"volume": "v.zarr"}})
    again = WorkflowConfig.model_validate(config.model_dump(mode="json"))
    assert again == config
