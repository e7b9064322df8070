"""prefect.yaml: every deployment names a real flow, its parameters validate, its cron schedule is what the
Prefect API stores; `radfm flows list` prints them."""

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
