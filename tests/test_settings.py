"""Settings declared once (settings.py): the command line and the widgets show every field with the field's
default, bounds are checked alike, and the README's command lines and option list match the settings."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from napari_helpers import PLUGIN, PREDICT, TRAIN

from napari_smlm_uq import cli
from napari_smlm_uq.analysis.metrics import ScoreSettings
from napari_smlm_uq.defaults import CAMERA_FIELDS
from napari_smlm_uq.inference.pipeline import PredictSettings
from napari_smlm_uq.inference.run import RunSettings
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings
from napari_smlm_uq.postprocess.workflow import Settings as PostprocessSettings
from napari_smlm_uq.settings import build, option, specs
from napari_smlm_uq.training import TrainSettings

POSTPROCESS = "Post-process"
README = Path(__file__).parent.parent / "README.md"
# command -> the settings classes whose fields are its options; widget -> the classes whose fields it shows
COMMANDS = {"simulate": (SimulationSettings,), "predict": (PredictSettings, RunSettings), "train": (TrainSettings,),
            "postprocess": (PostprocessSettings,), "evaluate": (ScoreSettings,)}
WIDGETS = {PREDICT: (PredictSettings, RunSettings), TRAIN: (TrainSettings,), POSTPROCESS: (PostprocessSettings,)}
# fields one front end shows in its own way (or not at all), by design
COMMAND_LINE_ONLY = {"model", "frames", "camera_map", "format", "workers", "chunk_frames", "resume", "out_dir", "init"}
FROM_THE_FILE = {"pixel_size", *CAMERA_FIELDS}   # predict: None on the command line means "the file's"


def options_of(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_field_is_an_option_with_its_default(command):
    options = options_of(command)
    for cls in COMMANDS[command]:
        for spec in specs(cls):
            if not spec.option.cli:
                continue
            action = options[spec.dest]
            assert spec.flag in action.option_strings
            if command == "predict" and spec.name in FROM_THE_FILE:
                assert action.default is None and f"else {spec.default:g}" in action.help
            else:
                assert action.default == spec.default, spec.name
            assert list(action.choices or ()) == list(spec.choices or ())


def test_every_field_is_shown_somewhere():
    for cls in {c for classes in (*COMMANDS.values(), *WIDGETS.values()) for c in classes}:
        for spec in specs(cls):
            if spec.name == "background" and cls is PredictSettings:
                continue   # chosen from the data and RunSettings.background, not set by hand
            assert spec.option.gui or spec.name in COMMAND_LINE_ONLY, f"{cls.__name__}.{spec.name}"
            assert spec.option.cli or spec.option.gui


@pytest.mark.parametrize("name", list(WIDGETS))
def test_every_widget_field_starts_at_the_field_default(make_napari_viewer, name):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    for cls in WIDGETS[name]:
        for spec in specs(cls):
            assert (spec.dest in widget.fields.widgets) == spec.option.gui, spec.name
        assert widget.fields.build(cls) == cls(), cls.__name__   # every shown field at its default
    given = {"tile_batch": 64, "schedule": "paper", "refine": False, "store_encoding": "float32"}
    if name == PREDICT:   # an input's value reaches the settings, None shown as 0 or an empty text
        for key, value in given.items():
            widget.fields[key].value = value
        built = widget.fields.build(PredictSettings)
        assert (built.tile_batch, built.schedule, built.refine) == (64, "paper", False)
        assert widget.fields.build(RunSettings).store_encoding == "float32"
        widget.fields["tile_batch"].value = 0
        assert widget.fields.build(PredictSettings).tile_batch is None


def test_bounds_and_choices_come_from_the_fields():
    with pytest.raises(InputError, match=r"gain must be > 0 ADU/e- \(got 0\)"):
        Camera(gain=0.0).validate()
    with pytest.raises(InputError, match="camera kind must be one of ccd, scmos, emccd"):
        Camera(kind="cmos").validate()
    with pytest.raises(InputError, match=r"photons range must have low <= high \(got 500, 100\)"):
        TrainSettings(photons=(500.0, 100.0)).validate()
    with pytest.raises(InputError, match=r"start must be in \(0, 1\]"):
        PredictSettings(start=1.5).validate()
    assert SimulationSettings(photons=(100.0, 500.0), size=(64, 16)).validate().shape == (64, 16)
    spec = {s.name: s for s in specs(PredictSettings)}
    assert spec["precision"].choices == ("auto", "fp32", "bf16") and spec["refine"].kind is bool
    assert spec["tile_batch"].optional and spec["kind"].dest == "camera_kind"


def test_build_reads_values_by_option_name_and_nested_settings():
    s = build(PredictSettings, {"samples": 4, "gain": 2.5, "camera_kind": "emccd", "background": "local"})
    assert (s.samples, s.camera.gain, s.camera.kind, s.camera.offset) == (4, 2.5, "emccd", Camera().offset)
    assert s.background is None   # chosen by the run: no front end sets it
    assert "background_estimate" not in vars(cli.parser().parse_args(["predict", "x.tif", "--out", "o"]))


def test_an_option_is_one_field(capsys):
    """A new field becomes a checked option without further code."""
    from dataclasses import dataclass

    from napari_smlm_uq.cli._options import Parser, add_options, settings

    @dataclass
    class Job:
        radius: float = option(2.0, help="search radius", unit="px", low=0.0, open_low=True)

    parser = Parser(prog="job")
    add_options(parser, Job)
    assert settings(Job, parser.parse_args(["--radius", "3"])).radius == 3.0
    assert "search radius (px, > 0); default: 2.0" in parser.format_help().replace("\n", " ").replace("  ", " ")
    with pytest.raises(InputError, match=r"argument --radius: radius must be > 0 px \(got 0\)"):
        parser.parse_args(["--radius", "0"])


def readme_commands() -> list[list[str]]:
    text = README.read_text().replace("\\\n", " ")
    lines = [line.split("#")[0] for line in re.findall(r"^\$ smlm-uq (.+)$", text, re.M)]
    return [line.split() for line in lines]


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: a[0])
def test_readme_command_lines_parse(args):
    parsed = cli.parser().parse_args(args)
    assert parsed.command == args[0]


def test_readme_option_list_matches_the_settings():
    text = README.read_text()
    paragraph = text[text.index("`smlm-uq predict` options:"):text.index("It streams")]
    options = options_of("predict")
    by_flag = {flag: a for a in options.values() for flag in a.option_strings}
    named = re.findall(r"`(--[a-z-]+)(?: ([^`]+))?`", paragraph)
    assert len(named) >= 10
    for flag, value in named:
        action = by_flag[flag]
        if value and "|" in value and action.choices:
            assert list(action.choices) == value.split("|"), flag
        elif value and re.fullmatch(r"[\d.]+", value):
            assert float(value) == action.default, flag
