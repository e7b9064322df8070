"""The YAML holds no second default: conf/data/_loader.yaml states DataConfig's defaults, and the objective and
callback configs name existing classes whose constructors accept every key they (or an experiment) set."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from radfm.data.config import DataConfig
from radfm.data.transforms import TransformConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
INTERPOLATED = {"seed"}  # set from the run's config (${seed}), not a default
PER_DATA_SET = {"manifest", "root", "name"}  # every data config states its own


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _class(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is_interpolation(value) -> bool:
    return isinstance(value, str) and value.startswith("${")


def test_the_loader_yaml_states_data_configs_defaults():
    raw = yaml.safe_load((CONF / "data" / "_loader.yaml").read_text())
    assert raw.pop("_target_") == "radfm.data.config.DataConfig"
    assert _is_interpolation(raw.pop("seed"))
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    transform = raw.pop("transform")
    for key, value in raw.items():
        assert key in fields, f"_loader.yaml sets {key}, which DataConfig has no field for"
        assert value == _default(fields[key]), f"_loader.yaml {key}: {value!r} != DataConfig's {_default(fields[key])!r}"
    # Every loader option is listed (the data set's own name, root and manifest are each data config's).
    assert set(fields) - set(raw) - {"transform"} - INTERPOLATED == PER_DATA_SET
    defaults = TransformConfig()
    for key, value in transform.items():
        assert hasattr(defaults, key), f"_loader.yaml transform.{key}: no such TransformConfig field"
        assert _is_interpolation(value) or value == getattr(defaults, key), key


def _accepts(target: str, keys: set[str], where: str) -> None:
    cls = _class(target)
    params = inspect.signature(cls).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), f"{target} takes **kwargs"
    unknown = keys - set(params)
    assert not unknown, f"{where} sets {sorted(unknown)}, which {target} does not accept"


@pytest.mark.parametrize("path", sorted((CONF / "objective").glob("*.yaml")) + [CONF / "callbacks" / "vision_warmup.yaml"],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_objective_and_callback_configs_name_classes_that_accept_their_keys(path):
    from omegaconf import OmegaConf

    from radfm.train.objectives import Objective

    raw = OmegaConf.to_container(OmegaConf.load(path))  # as Hydra reads it (YAML 1.1 floats such as 1e-3 too)
    assert list(raw) == [path.stem], f"{path.name} holds one node named after its file"
    node = raw[path.stem]
    _accepts(node["_target_"], set(node) - {"_target_"}, f"{path.parent.name}/{path.name}")
    params = inspect.signature(_class(node["_target_"])).parameters
    free = {"steps"}  # the warm-up's length: the file states a typical one, experiments their own
    for key, value in node.items():
        if key != "_target_" and key not in free and not _is_interpolation(value):
            default = params[key].default
            default = list(default) if isinstance(default, tuple) else default
            assert value == default, f"{path.name} {key}: {value!r} is not the class default {default!r}"
    if path.parent.name == "objective":
        cls = _class(node["_target_"])
        assert issubclass(cls, Objective) and "weight" in node  # every objective states its weight
        assert cls.name == path.stem  # the class's own name is the config's


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_what_experiments_set_on_objectives_and_callbacks_is_accepted(experiment):
    from omegaconf import OmegaConf

    from radfm.train.builder import build_data_config, build_objectives, build_stages
    from radfm.train.compose import compose

    cfg = compose([f"experiment={experiment}"])
    for group in ("objective", "callbacks"):
        for name, node in cfg[group].items():
            if OmegaConf.is_dict(node) and "_target_" in node:
                _accepts(node._target_, set(node) - {"_target_"}, f"experiment={experiment} {group}.{name}")
    # and they build
    assert [o.name for o in build_objectives(cfg)] == list(cfg.objective)
    assert build_stages(cfg)
    assert isinstance(build_data_config(cfg), DataConfig)


def test_a_data_sets_turns_are_set_from_the_command_line():
    """The old data.yesno_extra=all / data.redraw_yesno=true: data.turns names MedMD-synth's YesNoTurns."""
    from radfm.data.synth_turns import YesNoTurns
    from radfm.train.builder import build_data_config
    from radfm.train.compose import compose

    cfg = compose(["+data.turns._target_=radfm.data.synth_turns.YesNoTurns", "+data.turns.extra=all",
                   "+data.turns.redraw=true", "data.pack_questions=true"])
    turns = build_data_config(cfg).turns
    assert isinstance(turns, YesNoTurns) and (turns.extra, turns.redraw, turns.adds_turns) == ("all", True, True)
    assert build_data_config(compose()).turns is None
    with pytest.raises(ValueError, match=r"^data: .*needs data\.pack_questions=true"):
        build_data_config(compose(["+data.turns._target_=radfm.data.synth_turns.YesNoTurns",
                                   "+data.turns.extra=twin"]))
