import pytest

from pyro_compare.data import KANG2018, data_dir, dataset_path


def test_env_override_and_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_COMPARE_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="PYRO_COMPARE_DATA_DIR"):
        dataset_path(KANG2018)
    assert dataset_path(KANG2018, must_exist=False) == tmp_path / KANG2018
    (tmp_path / KANG2018).write_bytes(b"")
    assert dataset_path(KANG2018) == tmp_path / KANG2018


def test_default_finds_the_shared_folder_next_to_the_checkout(monkeypatch, kang_path):
    monkeypatch.delenv("PYRO_COMPARE_DATA_DIR", raising=False)
    found = dataset_path(KANG2018, must_exist=False)
    if not found.exists():
        pytest.skip(
            f"this checkout has no shared/data folder beside it ({found} is absent); the data "
            f"were found through PYRO_COMPARE_DATA_DIR only"
        )
    assert found.resolve() == kang_path.resolve()
