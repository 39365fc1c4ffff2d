"""Figures of :mod:`pyro_compare.plotting` draw what the history says."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import pyro_compare as pc  # noqa: E402


def _history(holds: bool, feasibility_epochs: int, name: str | None = None) -> pd.DataFrame:
    suffix = "" if name is None else f"_{name}"
    hist = pd.DataFrame(
        {
            "epoch": np.arange(6),
            f"penalty{suffix}": [0.05, 0.03, 0.02, 0.012, 0.011, 0.009],
            f"lambda{suffix}": [1.0, 1.5, 2.0, 3.0, 3.5, 4.0],
            "train_loss": np.linspace(10, 5, 6),
        }
    )
    value = 0.008 if holds else 0.015
    hist.attrs["constraints"] = [
        {"name": name or "penalty", "penalty": "P", "epsilon": 0.01, "value": value,
         "holds": holds}
    ]  # fmt: skip
    hist.attrs["feasibility_epochs"] = feasibility_epochs
    return hist


@pytest.mark.parametrize("holds", [True, False])
def test_constraint_trace_draws_penalty_epsilon_lambda_and_the_check(holds):
    hist = _history(holds, feasibility_epochs=2)
    ax = pc.plotting.constraint_trace(hist)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["penalty (minibatch mean)"].get_ydata(), hist["penalty"])
    assert set(lines["epsilon"].get_ydata()) == {0.01}  # epsilon read from the attrs
    check = lines["all cells, returned model"]
    value = hist.attrs["constraints"][0]["value"]
    assert list(check.get_xdata()) == [5] and list(check.get_ydata()) == [value]
    # filled diamond if the constraint holds on all cells, hollow if not
    assert (check.get_markerfacecolor() == check.get_color()) is holds
    (twin,) = [a for a in ax.figure.axes if a is not ax]
    assert twin.get_yscale() == "log"
    np.testing.assert_array_equal(twin.get_lines()[0].get_ydata(), hist["lambda"])
    # the two feasibility epochs are shaded: epochs 4 and 5
    (span,) = ax.patches
    x0, x1 = span.get_window_extent().x0, span.get_window_extent().x1
    to_data = ax.transData.inverted()
    assert to_data.transform((x0, 0))[0] == pytest.approx(3.5)
    assert to_data.transform((x1, 0))[0] == pytest.approx(5.5)
    plt.close(ax.figure)


def test_constraint_trace_of_a_named_constraint_and_explicit_epsilon():
    hist = _history(True, feasibility_epochs=0, name="leak")
    ax = pc.plotting.constraint_trace(hist, name="leak", epsilon=0.02)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines["epsilon"].get_ydata()) == {0.02}
    assert "all cells, returned model" in lines
    assert not ax.patches  # no feasibility epochs, nothing shaded
    plt.close(ax.figure)


def test_constraint_trace_needs_constraint_logs():
    hist = _history(True, 0).drop(columns=["penalty", "lambda"])
    with pytest.raises(ValueError, match="not from a Constrained fit"):
        pc.plotting.constraint_trace(hist)
    with pytest.raises(ValueError, match="'penalty_other'"):
        pc.plotting.constraint_trace(_history(True, 0), name="other")
