"""Sampler settings are one piece of data: the samplers' checks, the CLI, the evaluation and the
Generate tab read the same names, defaults and ranges (sampling/settings.py)."""
from __future__ import annotations

import pytest

from softvq_demo import load_generator
from softvq_demo.cli import build_parser
from softvq_demo.evaluate import _guidance_options
from softvq_demo.sampling import settings
from softvq_demo.sampling.flow import validate_options
from softvq_demo.ui.inputs import InputError


@pytest.fixture(scope="module")
def gens():
    return {"sit": load_generator("textscenes-sit"), "maskgit": load_generator("textscenes-maskgit")}


def test_one_range_for_every_reader():
    sit = settings.SIT
    validate_options(sit["steps"].high, "euler", sit["cfg_scale"].high, 0.0, 1.0, "linear")
    with pytest.raises(ValueError, match="steps"):
        validate_options(sit["steps"].high + 1, "euler", 1.0, 0.0, 1.0, "linear")
    with pytest.raises(ValueError, match="cfg_scale"):
        validate_options(10, "euler", sit["cfg_scale"].high + 0.5, 0.0, 1.0, "linear")
    with pytest.raises(ValueError, match="sde"):
        settings.check("sit", {"method": "sde", "steps": 1})
    with pytest.raises(ValueError, match="unknown sit sampler option"):
        settings.check("sit", {"guidance_scale": 2.0})
    assert str(int(sit["steps"].high)) in build_parser()._subparsers._group_actions[0] \
        .choices["generate"].format_help()


def test_defaults_and_guidance_switch(gens):
    sit, mg = gens["sit"], gens["maskgit"]
    d = settings.defaults(sit)
    assert d["cfg_scale"] == sit.config["sampling"]["cfg_scale"]   # config.json overrides the table
    assert set(d) == set(settings.SIT)
    m = settings.defaults(mg)
    assert m == {"steps": mg.num_steps, "guidance_scale": mg.guidance_scale,
                 "guidance_decay": mg.guidance_decay, "randomize_temperature": mg.randomize_temperature}
    assert settings.guidance_key(sit) == "cfg_scale" and settings.guidance_key(mg) == "guidance_scale"
    assert _guidance_options(sit, None, guided=False) == {"cfg_scale": 1.0}
    assert _guidance_options(mg, 2.5, guided=True) == {"guidance_scale": 2.5}
    with pytest.raises(ValueError, match="guidance_decay"):
        settings.resolve(mg, {"guidance_decay": "euler"})


def test_generate_controls_follow_the_family(gens):
    """MaskGIT shows its guidance decays and hides the SiT interval; a SiT method is refused."""
    from softvq_demo.ui.tab_generate import controls_for, run_generate
    from softvq_demo.ui.app import create_manager
    from softvq_demo.ui.common import Ctx

    radio, cfg, steps, low, high = controls_for(gens["maskgit"])
    assert radio["choices"] == list(settings.MASKGIT["guidance_decay"].choices)
    assert radio["value"] == gens["maskgit"].guidance_decay
    assert low["visible"] is False and high["visible"] is False
    assert cfg["maximum"] == settings.MASKGIT["guidance_scale"].high
    radio, _, steps, low, _ = controls_for(gens["sit"])
    assert radio["choices"] == list(settings.SIT["method"].choices) and low["visible"] is True
    assert steps["maximum"] == settings.SIT["steps"].high
    ctx = Ctx(manager=create_manager())
    with pytest.raises(InputError, match="guidance decay"):
        run_generate(ctx, "textscenes-maskgit", [0], 2.0, 0.0, 1.0, 2, "euler", 0, 1)
