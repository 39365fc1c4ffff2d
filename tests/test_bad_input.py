"""Bad input: a clear error naming the problem (and the fix), before any training.

One table: each case builds a bad input, calls the public entry point a user would call
(``pc.tl.fit``, ``pc.tl.latents``, ... or the ``pyro-compare`` command) and states the
error type and the regular expressions its message must match: the first names the
problem, the others the fix where there is one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pyro_compare as pc
from pyro_compare.cli import main
from pyro_compare.data import DataValidationError

FIT = dict(
    condition_key="condition",
    background="background",
    n_background_latent=2,
    n_salient_latent=1,
    max_epochs=1,
    progress=False,
)


def _adata(seed: int = 0, n: int = 40, genes: int = 12) -> ad.AnnData:
    """Small simulated counts, dense float X, conditions "background" / "target"."""
    adata = pc.data.simulate_contrastive(n, n, genes, 2, 1, seed=seed, library_mean=300)
    if hasattr(adata.X, "toarray"):
        adata.X = adata.X.toarray()
    adata.X = np.asarray(adata.X, dtype=np.float32)
    return adata


@pytest.fixture(scope="module")
def fitted():
    adata = _adata()
    model = pc.tl.fit(adata, key_added="small", **FIT)
    return adata, model


@dataclass
class Case:
    """One bad input: ``run(ctx)`` must raise ``error`` with a message matching ``patterns``."""

    name: str
    run: Callable[[dict], object]
    error: type[BaseException] | tuple[type[BaseException], ...]
    patterns: tuple[str, ...]
    #: For the command line: ``run`` returns (exit status, stderr) instead of raising.
    cli: bool = False
    #: Success is acceptable too (a limitation that later work may lift).
    may_succeed: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


def _with(adata: ad.AnnData, **changes) -> ad.AnnData:
    out = adata.copy()
    for k, v in changes.items():
        if k == "X":
            out.X = v
        else:
            out.obs[k] = v
    return out


# ---------------------------------------------------------------------------- data cases
def _negative(ctx):
    a = _adata()
    a.X[0, 0] = -1.0
    return pc.tl.fit(a, **FIT)


def _non_integer(ctx):
    a = _adata()
    a.X = a.X + 0.5
    return pc.tl.fit(a, **FIT)


def _nan_values(ctx):
    a = _adata()
    a.X[3, 2] = np.nan
    return pc.tl.fit(a, **FIT)


def _inf_values(ctx):
    a = _adata()
    a.X[3, 2] = np.inf
    return pc.tl.fit(a, **FIT)


def _empty_source(ctx):
    a = _adata()
    a.obs["condition"] = "background"
    return pc.tl.fit(a, **FIT)


def _unknown_background(ctx):
    return pc.tl.fit(_adata(), **{**FIT, "background": "control"})


def _unknown_exclude(ctx):
    return pc.tl.fit(_adata(), exclude=["unassigned"], **FIT)


def _missing_obs_key(ctx):
    return pc.tl.fit(_adata(), **{**FIT, "condition_key": "stim"})


def _wrong_layer(ctx):
    return pc.tl.fit(_adata(), layer="counts", **FIT)


def _nan_condition(ctx):
    a = _adata()
    cond = a.obs["condition"].astype(object).to_numpy()
    cond[[1, 5]] = np.nan
    a.obs["condition"] = pd.Categorical(cond)
    return pc.tl.fit(a, **FIT)


def _nan_perturbation(ctx):
    a = _adata()
    a.obs["perturbation"] = np.where(a.obs["condition"] == "background", "background", "G1")
    a.obs.loc[a.obs_names[-2:], "perturbation"] = np.nan
    return pc.tl.fit(a, model="AdditiveShiftVAE", perturbation_key="perturbation", **FIT)


def _zero_count_cells(ctx):
    a = _adata()
    a.X[[0, 4]] = 0.0
    return pc.tl.fit(a, **FIT)


def _missing_genes(ctx):
    adata, model = ctx["fitted"]
    new = adata[:, 3:].copy()
    return pc.tl.latents(new, model, condition_key="condition", background="background")


def _library_values(ctx):
    a = _adata()
    a.obs["size_factor"] = 1.0
    a.obs.loc[a.obs_names[2], "size_factor"] = 0.0
    return pc.tl.fit(a, library_key="size_factor", **FIT)


def _library_key_missing(ctx):
    return pc.tl.fit(_adata(), library_key="n_counts", **FIT)


def _backed(ctx):
    path = ctx["tmp_path"] / "backed.h5ad"
    _adata().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        return pc.tl.fit(backed, **FIT)
    finally:
        backed.file.close()


def _non_numeric(ctx):
    a = _adata()
    X = a.X.astype(object)
    X[0, 0] = "three"
    return pc.tl.fit(ad.AnnData(X=X, obs=a.obs, var=a.var), **FIT)


def _counts_false_with_nb(ctx):
    return pc.tl.fit(_adata(), counts=False, likelihood="nb", **FIT)


def _duplicated_genes(ctx):
    a = _adata()
    a.var_names = ["g0"] * 2 + list(a.var_names[2:])
    return pc.tl.fit(a, **FIT)


def _unknown_model(ctx):
    return pc.tl.fit(_adata(), model="NoSuchVAE", **FIT)


def _perturbation_model_without_key(ctx):
    return pc.tl.fit(_adata(), model="SAMSVAE", **FIT)


# ---------------------------------------------------------------------------- pc.tl cases
def _latents_new_adata_no_settings(ctx):
    _, model = ctx["fitted"]
    return pc.tl.latents(_adata(seed=1), _bare(model))


def _bare(model):
    """The same model without the data settings pc.tl.fit remembered on it."""
    clone = pc.models.ContrastiveVAE(**model._init_args)
    clone.load_state_dict(model.state_dict())
    return clone


def _latents_unknown_keyword(ctx):
    adata, model = ctx["fitted"]
    return pc.tl.latents(adata, model, condition_column="condition")


def _latents_missing_condition_column(ctx):
    _, model = ctx["fitted"]
    new = _adata(seed=2)
    new.obs = new.obs.rename(columns={"condition": "stim"})
    return pc.tl.latents(new, model)


def _unknown_latent_kind(ctx):
    adata, model = ctx["fitted"]
    return pc.tl.latents(adata, model, kinds=["nope"])


def _unknown_fit_key(ctx):
    adata, model = ctx["fitted"]
    return pc.tl.latents(adata, _bare(model), key="nope")


def _history_unknown_key(ctx):
    adata, _ = ctx["fitted"]
    return pc.tl.history(adata, "nope")


def _leakage_missing_obsm(ctx):
    adata, _ = ctx["fitted"]
    return pc.tl.knn_leakage(adata, ["X_nope_background"], "condition")


def _counterfactual_bad_salient(ctx):
    adata, model = ctx["fitted"]
    return pc.tl.counterfactual(adata, model, salient="likely")


# ---------------------------------------------------------------------------- CLI cases
def _cli(ctx, *extra: str, data: Path | None = None, out: Path | None = None):
    tmp: Path = ctx["tmp_path"]
    if data is None:
        data = tmp / "in.h5ad"
        if not data.exists():
            _adata().write_h5ad(data)
    out = out if out is not None else tmp / "out.h5ad"
    argv = ["--threads", "1", "fit", str(data), "--out", str(out)]
    argv += ["--condition-key", "condition", "--background", "background", "--max-epochs", "1"]
    argv += ["--n-background-latent", "2", "--n-salient-latent", "1", "--no-progress"]
    status = main([*argv, *extra])
    return status, ctx["capsys"].readouterr().err


def _cli_missing_input(ctx):
    return _cli(ctx, data=ctx["tmp_path"] / "nope.h5ad")


def _cli_not_h5ad(ctx):
    path = ctx["tmp_path"] / "table.h5ad"
    path.write_text("cell,gene\n")
    return _cli(ctx, data=path)


def _cli_not_anndata(ctx):
    import h5py

    path = ctx["tmp_path"] / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    return _cli(ctx, data=path)


def _cli_unwritable_output(ctx):
    blocker = ctx["tmp_path"] / "a_file"
    blocker.write_text("")
    return _cli(ctx, out=blocker / "sub" / "out.h5ad")


def _cli_output_is_directory(ctx):
    return _cli(ctx, out=ctx["tmp_path"])


def _cli_unwritable_save_model(ctx):
    blocker = ctx["tmp_path"] / "a_file"
    blocker.write_text("")
    return _cli(ctx, "--save-model", str(blocker / "model.pt"))


def _cli_unknown_model(ctx):
    return _cli(ctx, "--model", "NoSuchVAE")


def _cli_bad_device(ctx):
    return _cli(ctx, "--device", "quantum")


def _cli_non_integer(ctx):
    path = ctx["tmp_path"] / "normalised.h5ad"
    a = _adata()
    a.X = np.log1p(a.X)
    a.write_h5ad(path)
    return _cli(ctx, data=path)


def _cli_perturbation_model_without_key(ctx):
    return _cli(ctx, "--model", "SAMSVAE")


CASES = [
    Case("negative counts", _negative, DataValidationError, ("negative", "counts=False")),
    Case("non-integer counts", _non_integer, DataValidationError, ("non-integer", "counts=False")),
    Case("NaN values", _nan_values, DataValidationError, ("NaN", "[Rr]emove or impute")),
    Case("infinite values", _inf_values, DataValidationError, ("infinite", "Remove")),
    Case("empty source", _empty_source, DataValidationError, ("'target' has zero cells",)),
    Case(
        "unknown background value",
        _unknown_background,
        DataValidationError,
        (r"background value \['control'\] not found", "'background'"),
    ),
    Case(
        "unknown excluded value",
        _unknown_exclude,
        DataValidationError,
        (r"excluded value\(s\) \['unassigned'\] not found",),
    ),
    Case(
        "missing obs key",
        _missing_obs_key,
        DataValidationError,
        ("'stim' is not a column of adata.obs", "'condition'"),
    ),
    Case(
        "wrong layer",
        _wrong_layer,
        DataValidationError,
        ("layer 'counts' is not in adata.layers", "layer=None"),
    ),
    Case(
        "NaN in the condition column",
        _nan_condition,
        DataValidationError,
        (r"adata.obs\['condition'\].* 2 missing", "notna"),
        tags=("core",),
    ),
    Case(
        "NaN in the perturbation column",
        _nan_perturbation,
        DataValidationError,
        (r"adata.obs\['perturbation'\].* 2 missing", "notna"),
        tags=("core",),
    ),
    Case(
        "zero-count cells",
        _zero_count_cells,
        DataValidationError,
        ("2 cell.s. have zero total counts", "filter_cells"),
    ),
    Case(
        "missing genes",
        _missing_genes,
        DataValidationError,
        ("lack 3 of the model's 12", r"first: \['gene0'", "feature_names"),
        tags=("core",),
    ),
    Case(
        "library_key with a zero",
        _library_values,
        DataValidationError,
        (r"obs\['size_factor'\] must hold positive finite library sizes",),
    ),
    Case(
        "library_key not in obs",
        _library_key_missing,
        DataValidationError,
        ("library_key 'n_counts' is not a column",),
    ),
    Case(
        "backed AnnData",
        _backed,
        DataValidationError,
        ("backed", r"to_memory\(\)"),
        may_succeed=True,
    ),
    Case("non-numeric X", _non_numeric, DataValidationError, ("non-numeric dtype",)),
    Case(
        "counts=False with a count likelihood",
        _counts_false_with_nb,
        DataValidationError,
        ("'nb' needs raw counts", "likelihood='gaussian'"),
    ),
    Case(
        "duplicated gene names",
        _duplicated_genes,
        DataValidationError,
        ("duplicated feature names", "var_names_make_unique"),
    ),
    Case(
        "unknown model name", _unknown_model, ValueError, ("unknown model 'NoSuchVAE'", "SAMSVAE")
    ),
    Case(
        "perturbation model without perturbation_key",
        _perturbation_model_without_key,
        ValueError,
        ("SAMSVAE models perturbations", "perturbation_key="),
    ),
    Case(
        "pc.tl.latents on a new AnnData, no settings",
        _latents_new_adata_no_settings,
        ValueError,
        ("cannot tell which cells are background", "condition_key=", "background="),
    ),
    Case(
        "pc.tl.latents with an unknown keyword",
        _latents_unknown_keyword,
        TypeError,
        ("condition_column", "condition_key"),
    ),
    Case(
        "pc.tl.latents on an AnnData without the condition column",
        _latents_missing_condition_column,
        DataValidationError,
        ("'condition' is not a column of adata.obs", "'stim'"),
    ),
    Case(
        "unknown latent kind",
        _unknown_latent_kind,
        ValueError,
        ("unknown latent kind 'nope'", "background"),
    ),
    Case(
        "unknown fit key",
        _unknown_fit_key,
        KeyError,
        (r"\['nope'\] holds no data settings", "key_added='nope'", "condition_key="),
    ),
    Case("history of an unknown fit", _history_unknown_key, KeyError, ("no history", "small")),
    Case(
        "knn_leakage on a missing obsm key",
        _leakage_missing_obsm,
        DataValidationError,
        ("obsm has no", "X_small_background", "key_added"),
    ),
    Case(
        "counterfactual with an unknown salient mode",
        _counterfactual_bad_salient,
        ValueError,
        ("'posterior' or 'prior'", "'likely'"),
    ),
    Case("CLI: missing input", _cli_missing_input, (), ("nope.h5ad' does not exist",), cli=True),
    Case("CLI: input not HDF5", _cli_not_h5ad, (), ("not an .h5ad file", "write_h5ad"), cli=True),
    Case(
        "CLI: HDF5 but not AnnData", _cli_not_anndata, (), ("cannot read .* as AnnData",), cli=True
    ),
    Case(
        "CLI: output folder cannot be created",
        _cli_unwritable_output,
        (),
        ("cannot create the folder of output", "a_file is a file"),
        cli=True,
    ),
    Case("CLI: output is a directory", _cli_output_is_directory, (), ("is a directory",), cli=True),
    Case(
        "CLI: --save-model cannot be written",
        _cli_unwritable_save_model,
        (),
        ("--save-model", "a_file is a file"),
        cli=True,
    ),
    Case(
        "CLI: unknown model name",
        _cli_unknown_model,
        (),
        ("invalid choice: 'NoSuchVAE'", "ContrastiveVAE"),
        cli=True,
    ),
    Case("CLI: unknown device", _cli_bad_device, (), ("--device 'quantum'",), cli=True),
    Case(
        "CLI: non-integer counts",
        _cli_non_integer,
        (),
        ("non-integer", "--likelihood gaussian"),
        cli=True,
    ),
    Case(
        "CLI: perturbation model without --perturbation-key",
        _cli_perturbation_model_without_key,
        (),
        ("SAMSVAE needs --perturbation-key",),
        cli=True,
    ),
]


def run_case(case: Case, ctx: dict) -> str | None:
    """Run ``case``; return the error message (``None`` when it succeeded)."""
    if case.cli:
        status, err = case.run(ctx)
        if status == 0 and case.may_succeed:
            return None
        assert status == 2, f"exit status {status}, stderr: {err}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err, err
        # File / data errors: one line; usage errors: argparse's usage + one error line.
        assert lines and re.match(r"pyro-compare( fit)?: error: ", lines[-1]), err
        if lines[-1].startswith("pyro-compare: error: "):
            assert len(lines) == 1, err
        return lines[-1]
    try:
        case.run(ctx)
    except case.error as err:
        return str(err.args[0]) if isinstance(err, KeyError) else str(err)
    if case.may_succeed:
        return None
    raise AssertionError(f"{case.name}: no {case.error} raised")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_reported_clearly(case, fitted, tmp_path, capsys):
    ctx = {"fitted": fitted, "tmp_path": tmp_path, "capsys": capsys}
    message = run_case(case, ctx)
    if message is None:
        return
    for pattern in case.patterns:
        assert re.search(pattern, message), f"{case.name}: {pattern!r} not in {message!r}"
    if case.cli:
        # File and usage errors come before training: nothing was written.
        assert not (tmp_path / "out.h5ad").exists()


def test_table_is_large_enough():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)
