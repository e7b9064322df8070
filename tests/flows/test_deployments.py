"""prefect.yaml: every deployment names a real flow, its parameters validate, its DVC data is the data its
experiment makes, its cron schedule is what the Prefect API stores; `radfm flows list` prints them. (The shipped
nightly-retrain served and run end to end: test_scheduled_retrain.py.)"""

from __future__ import annotations

import asyncio

import pytest

from flows.serve import build_deployments, load_flow, load_spec


def test_every_deployment_points_at_a_flow_with_valid_parameters():
    spec = load_spec()
    assert {d["name"] for d in spec} == {"radfm-pipeline", "nightly-retrain", "weekly-sweep"}
    for d in spec:
        flow = load_flow(d["entrypoint"])
        flow.validate_parameters(d.get("parameters") or {})  # raises on a parameter the flow does not take


def test_dvc_data_of_a_deployment_is_the_data_its_experiment_makes(monkeypatch):
    """A deployment that reads DVC-tracked data names the manifest its own experiment generates on a fresh clone
    (MedMD-synth under data/, tracked by data.dvc): the data the demo trained the champion on, so the retrain
    compares like with like; the tracked folder is the one data.dvc records."""
    from pathlib import Path

    import yaml

    from flows.params import PipelineParams
    from radfm.train.compose import compose

    monkeypatch.delenv("RADFM_DATA_DIR", raising=False)
    root = Path(__file__).resolve().parents[2]
    checked = 0
    for d in load_spec():
        params = (d.get("parameters") or {}).get("params") or {}
        pipeline = PipelineParams.model_validate(params.get("pipeline", params))
        if pipeline.data.kind != "dvc":
            continue
        data = pipeline.data
        assert data.manifest, f"{d['name']}: name the manifest inside {data.target}/ (data.manifest)"
        cfg = compose(pipeline.overrides, pipeline.config_name)
        assert Path(data.repo) / data.target / data.manifest == Path(str(cfg.data.manifest)), d["name"]
        tracked = yaml.safe_load((root / data.repo / f"{data.target}.dvc").read_text())
        assert tracked["outs"][0]["path"] == data.target
        checked += 1
    assert checked  # nightly-retrain reads DVC data


def test_the_readme_pipeline_command_reads_the_nightly_retrain_data():
    """`radfm pipeline --data-kind dvc --data-manifest medmd-synth/manifest.jsonl` (README) runs on the data the
    nightly-retrain deployment ships with."""
    from flows.params import DataSpec
    from flows.pipeline import data_spec, parse_args

    nightly = next(d for d in load_spec() if d["name"] == "nightly-retrain")
    shipped = DataSpec.model_validate(nightly["parameters"]["params"]["pipeline"]["data"])
    args = parse_args(["--data-kind", "dvc", "--data-manifest", "medmd-synth/manifest.jsonl"])
    assert data_spec(args) == shipped


def test_a_bad_entrypoint_is_a_clear_error():
    with pytest.raises((ValueError, ModuleNotFoundError)):
        load_flow("flows/pipeline.py:no_such_flow")


def test_deployments_apply_with_their_cron_schedules(prefect_harness):
    from prefect.client.orchestration import get_client

    deployments = build_deployments()
    crons = {d.name: [s.schedule.cron for s in d.schedules or []] for d in deployments}
    assert crons["nightly-retrain"] == ["0 2 * * *"] and crons["weekly-sweep"] == ["0 3 * * 0"]
    assert crons["radfm-pipeline"] == []
    retrain = next(d for d in deployments if d.name == "nightly-retrain")
    deployment_id = retrain.apply()

    async def read():
        async with get_client() as c:
            dep = await c.read_deployment(deployment_id)
            return dep, await c.read_deployment_schedules(deployment_id)

    dep, schedules = asyncio.run(read())
    assert dep.name == "nightly-retrain"
    assert [s.schedule.cron for s in schedules] == ["0 2 * * *"] and schedules[0].active
    assert dep.parameters["params"]["pipeline"]["data"]["kind"] == "dvc"


def test_flows_list_cli(capsys):
    from flows.serve import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nightly-retrain" in out and "0 2 * * *" in out


def test_radfm_flows_and_pipeline_cli_hand_over_to_flows(capfd):
    from radfm.cli import main as radfm_main

    assert radfm_main(["flows", "list"]) == 0
    assert "weekly-sweep" in capfd.readouterr().out
    assert radfm_main(["pipeline", "--help"]) == 0
    out = capfd.readouterr().out
    assert "--refresh" in out and "--data-kind" in out
