"""The ``pyro-compare`` command: demo, fit, and files checked before any training."""

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from pyro_compare.cli import build_parser, main
from pyro_compare.data import simulate_contrastive
from pyro_compare.models import load_model


def test_demo_fast_writes_report(tmp_path):
    out = tmp_path / "report"
    assert main(["--threads", "1", "demo", "--fast", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("loss_curves.png", "constraint.png", "latents.png", "history.csv", "model.pt"):
        assert (out / name).stat().st_size > 0, name
    # Even the fast demo learns something: recovery well above the leakage terms.
    assert metrics["r2_background_from_background"] > 0.6
    assert metrics["r2_salient_from_salient"] > 0.6
    assert metrics["r2_salient_from_background"] < metrics["r2_salient_from_salient"]
    assert set(metrics["block_r2"]) == {"learned_background", "learned_salient"}
    # The default objective's constraint check is reported (value against epsilon).
    (check,) = metrics["constraints"]
    assert check["holds"] == (check["value"] <= check["epsilon"])
    assert metrics["epochs"] == 15 + metrics["feasibility_epochs"]


@pytest.fixture
def h5ad(tmp_path):
    adata = simulate_contrastive(120, 120, 20, 2, 1, seed=0, library_mean=500)
    adata.obs["condition"] = adata.obs["condition"].map({"background": "ctrl", "target": "stim"})
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    return path


def _argv(path, out, *extra):
    argv = ["--threads", "1", "fit", str(path), "--condition-key", "condition"]
    argv += ["--background", "ctrl", "--out", str(out), "--max-epochs", "3", "--no-progress"]
    argv += ["--n-background-latent", "2", "--n-salient-latent", "1"]
    return [*argv, *extra]


def test_fit_command_writes_obsm_uns_and_model(h5ad, tmp_path, capsys):
    out, model_path = tmp_path / "new" / "out.h5ad", tmp_path / "models" / "m.pt"
    assert main(_argv(h5ad, out, "--save-model", str(model_path), "--seed", "1")) == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_background"].shape == (240, 2)
    assert result.obsm["X_salient"].shape == (240, 1)
    assert np.isfinite(result.obsm["X_background"]).all()
    entry = result.uns["pyro_compare"]["default"]
    assert len(entry["history"]["train_loss"]) == 3
    assert entry["fit"]["seed"] == 1
    # One default objective, decided by pc.infer.fit (no CLI-only W2 term).
    assert entry["objective"]["default"]
    assert dict(entry["obsm_keys"]) == {"background": "X_background", "salient": "X_salient"}
    printed = capsys.readouterr().out
    assert "X_background, X_salient" in printed and str(model_path) in printed
    model = load_model(model_path)
    assert model.n_salient_latent == 1


def test_fit_command_named_fit_and_opt_in_penalty(h5ad, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    argv = _argv(h5ad, out, "--key-added", "cvae", "--salient-penalty", "5")
    assert main(argv) == 0
    result = ad.read_h5ad(out)
    assert {"X_cvae_background", "X_cvae_salient"} <= set(result.obsm)
    assert "X_background" not in result.obsm
    objective = result.uns["pyro_compare"]["cvae"]["objective"]
    assert objective["class"] == "Sum" and objective["penalty_weight"] == 5.0
    assert "penalty" in result.uns["pyro_compare"]["cvae"]["history"]
    assert "X_cvae_background, X_cvae_salient" in capsys.readouterr().out


def test_fit_command_gaussian_on_normalised_data(tmp_path, capsys):
    adata = simulate_contrastive(60, 60, 15, 2, 1, seed=2)
    adata.X = np.log1p(adata.X.toarray()).astype(np.float32)
    path, out = tmp_path / "lognorm.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    argv = ["--threads", "1", "fit", str(path), "--condition-key", "condition"]
    argv += ["--background", "background", "--out", str(out), "--max-epochs", "1"]
    assert main(argv) == 2
    assert "--likelihood gaussian" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--likelihood", "gaussian", "--no-progress"]) == 0
    assert not ad.read_h5ad(out).uns["pyro_compare"]["default"]["data"]["counts"]


def test_fit_command_keeps_the_model_when_the_h5ad_cannot_be_written(
    h5ad, tmp_path, capsys, monkeypatch
):
    def fail(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    out, model_path = tmp_path / "out.h5ad", tmp_path / "m.pt"
    assert main(_argv(h5ad, out, "--save-model", str(model_path))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-compare: error: cannot write output") and "\n" not in err
    assert "No space left" in err and str(model_path) in err
    assert model_path.stat().st_size > 0  # the model was written first
    assert not out.exists() and not list(tmp_path.glob(".out.h5ad*"))  # no partial file
    # Without --save-model, the fitted model is rescued to a temporary file.
    assert main(_argv(h5ad, out)) == 2
    err = capsys.readouterr().err
    rescued = err.split("the fitted model is in ")[1].strip()
    assert Path(rescued).stat().st_size > 0
    Path(rescued).unlink()


def test_fit_command_shows_progress_in_logs(h5ad, tmp_path, capsys):
    """Not a terminal (a log file): a line with the per-source losses, not a silent fit."""
    argv = [
        a for a in _argv(h5ad, tmp_path / "out.h5ad", "--device", "cpu") if a != "--no-progress"
    ]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fit:")]
    assert lines and "background" in lines[0] and "target" in lines[0]


def test_fit_command_reports_bad_input(tmp_path, capsys):
    adata = simulate_contrastive(20, 20, 10, 2, 1, seed=0)
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    argv = ["fit", str(path), "--condition-key", "condition", "--background", "control"]
    assert main([*argv, "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "background value ['control'] not found" in capsys.readouterr().err


def test_every_option_has_help_and_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in [("pyro-compare", parser), *sub.choices.items()]:
        text = command.format_help()
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.option_strings and not action.required and action.nargs != 0:
                formatted = command._get_formatter()._get_help_string(action)
                assert "(default" in formatted, f"{name} {action.dest}: default not shown"
        assert "show this help" in text
    assert main(["fit", "--help"]) == 0
