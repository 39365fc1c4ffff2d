import json

import anndata as ad
import numpy as np

from pyro_compare.cli import main
from pyro_compare.data import simulate_contrastive


def test_demo_fast_writes_report(tmp_path):
    out = tmp_path / "report"
    assert main(["--threads", "1", "demo", "--fast", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("loss_curves.png", "latents.png", "history.csv", "model.pt"):
        assert (out / name).stat().st_size > 0, name
    # Even the fast demo learns something: recovery well above the leakage terms.
    assert metrics["r2_background_from_background"] > 0.6
    assert metrics["r2_salient_from_salient"] > 0.6
    assert metrics["r2_salient_from_background"] < metrics["r2_salient_from_salient"]
    assert set(metrics["block_r2"]) == {"learned_background", "learned_salient"}


def test_fit_command_writes_obsm_and_uns(tmp_path):
    adata = simulate_contrastive(120, 120, 20, 2, 1, seed=0, library_mean=500)
    adata.obs["condition"] = adata.obs["condition"].map({"background": "ctrl", "target": "stim"})
    path, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    argv = ["--threads", "1", "fit", str(path), "--condition-key", "condition"]
    argv += ["--background", "ctrl", "--out", str(out), "--max-epochs", "3"]
    argv += ["--n-background-latent", "2", "--n-salient-latent", "1"]
    assert main(argv) == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_background"].shape == (240, 2)
    assert result.obsm["X_salient"].shape == (240, 1)
    assert np.isfinite(result.obsm["X_background"]).all()
    history = result.uns["pyro_compare"]["contrastive_vae"]["history"]
    assert len(history["train_loss"]) == 3
    assert "penalty" in history


def test_fit_command_reports_bad_input(tmp_path, capsys):
    adata = simulate_contrastive(20, 20, 10, 2, 1, seed=0)
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    argv = ["fit", str(path), "--condition-key", "condition", "--background", "control"]
    assert main([*argv, "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "background value ['control'] not found" in capsys.readouterr().err
