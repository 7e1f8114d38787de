"""Workflow YAML: safe loading, typed validation, errors that name the key path, where a workflow may write."""

from pathlib import PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ConfigError
from workflows.spec import RUN_ENTRIES, WorkflowConfig, check_write_paths, load_workflow


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


# -- property test: the parser and the write-path rule -------------------------------------------

_SEGMENTS = st.sampled_from(["..", ".", "a", "run", "in_link", "out_link", "work", "v.zarr"])


def _layout(root):
    """root/run (the run directory) with a/, in_link -> run/a and out_link -> root/x."""
    run = root / "run"
    if not run.exists():
        (run / "a").mkdir(parents=True)
        (root / "x").mkdir()
        (run / "in_link").symlink_to(run / "a", target_is_directory=True)
        (run / "out_link").symlink_to(root / "x", target_is_directory=True)
    return run


def _expected(root, start: str, segments) -> PurePosixPath:
    """Where ``start/segments`` lands, resolved by hand from the known layout (an oracle independent of pathlib)."""
    root_parts = list(PurePosixPath(root).parts)
    links = {tuple(root_parts + ["run", "in_link"]): root_parts + ["run", "a"],
             tuple(root_parts + ["run", "out_link"]): root_parts + ["x"]}
    parts = root_parts + ([] if start == "root" else ["run"])
    for seg in segments:
        if seg == "..":
            parts = parts[:-1] if len(parts) > 1 else parts
        elif seg != ".":
            parts = parts + [seg]
            parts = list(links.get(tuple(parts), parts))
    return PurePosixPath(*parts)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.sampled_from(["root", "run"]), segments=st.lists(_SEGMENTS, max_size=6), overwrite=st.booleans())
def test_ingest_out_is_accepted_exactly_when_the_rule_allows_it(tmp_path, start, segments, overwrite):
    """Any spelling of ``input.ingest.out`` (``..``, ``.``, links in and out of the run) parses, and the
    write-path check accepts it exactly when the resolved path obeys the rule; otherwise a ConfigError
    names the key and the path as written."""
    import yaml

    root = tmp_path.resolve()
    run = _layout(root)
    raw = "/".join([str(root if start == "root" else run), *segments])
    data = {"input": {"ingest": {"channels": "c.yaml", "out": raw, "overwrite": overwrite}}, "output": str(run)}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_workflow(path)
    assert str(config.input.ingest.out) == str(PurePosixPath(raw))  # parsed as written, not resolved
    assert WorkflowConfig.model_validate(config.model_dump(mode="json")) == config

    where = _expected(root, start, segments)
    run_path = PurePosixPath(run)
    inside = where == run_path or run_path in where.parents
    if where == run_path or where in run_path.parents:
        problem = "the run directory"
    elif inside and where.relative_to(run_path).parts[0] in RUN_ENTRIES:
        problem = "the run's own"
    elif not inside and overwrite:
        problem = "outside the run directory"
    else:
        problem = None
    if problem is None:
        check_write_paths(config)
    else:
        with pytest.raises(ConfigError) as info:
            check_write_paths(config)
        message = str(info.value)
        assert message.startswith("input.ingest.out: ") and repr(str(config.input.ingest.out)) in message
        assert problem in message and str(where) in message, (problem, str(where), message)
