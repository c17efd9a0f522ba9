import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lm_diff import config as C
from lm_diff.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path, text):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    return p


def test_packaged_configs_load_and_validate():
    for p in sorted((REPO / "configs").glob("*.yaml")):
        if p.name == "taxonomy.yaml":
            continue
        cfg = C.load_config(p)
        assert cfg.source == str(p)


def test_unknown_key_names_file_key_and_close_match(tmp_path):
    p = _write(tmp_path, "crosscoder:\n  dict_sise: 3\n")
    with pytest.raises(ConfigError) as e:
        C.load_config(p)
    assert str(e.value) == f"{p}: crosscoder.dict_sise is not a key; did you mean dict_size?"


def test_wrong_type_names_expected(tmp_path):
    p = _write(tmp_path, "crosscoder:\n  k: many\n")
    with pytest.raises(ConfigError, match=r"crosscoder.k must be an integer, got 'many'"):
        C.load_config(p)


def test_bad_literal_suggests(tmp_path):
    p = _write(tmp_path, "crosscoder:\n  architecture: batchtop\n")
    with pytest.raises(ConfigError, match="did you mean batchtopk"):
        C.load_config(p)


def test_impossible_values(tmp_path):
    cases = {
        "crosscoder:\n  k: 2000\n  dict_size: 100\n": "must not exceed",
        "design: anchored\n": "models.anchor is not set",
        "diff:\n  base_only: 0.95\n": "diff.base_only",
        "layers: [top]\n": r"layers\[0\]",
        "capture:\n  corpus:\n    - {path: a.txt, weight: -1}\n": r"capture.corpus\[0\].weight",
        "categories:\n  specificity_min: 0.3\n": "categories.specificity_min must be in",
    }
    for text, msg in cases.items():
        with pytest.raises(ConfigError, match=msg):
            C.load_config(_write(tmp_path, text))


def test_nested_list_of_dataclasses_and_overrides(tmp_path):
    p = _write(tmp_path, "capture:\n  corpus:\n    - {path: organisms:neutral, weight: 2}\n")
    cfg = C.load_config(p, overrides={"crosscoder.k": 8})
    assert isinstance(cfg.capture.corpus[0], C.CorpusSource)
    assert cfg.capture.corpus[0].weight == 2.0
    assert cfg.crosscoder.k == 8


def test_invalid_yaml_reports_line(tmp_path):
    p = _write(tmp_path, "crosscoder: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_config(p)


def test_every_config_field_has_a_docstring():
    def walk(cls):
        docs = C.field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            for t in (f.type if not isinstance(f.type, str) else "",):
                pass
        hints = __import__("typing").get_type_hints(cls)
        for name, tp in hints.items():
            for sub in [tp, *__import__("typing").get_args(tp)]:
                if dataclasses.is_dataclass(sub):
                    walk(sub)

    walk(C.RunConfig)


def test_cli_config_error_exit_code_and_no_traceback(tmp_path):
    p = _write(tmp_path, "crosscoder:\n  dict_sise: 3\n")
    r = subprocess.run([sys.executable, "-m", "lm_diff", "config", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "crosscoder.dict_sise is not a key; did you mean dict_size?" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    r = subprocess.run([sys.executable, "-m", "lm_diff", "--debug", "config", str(p)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("text, key", [
    ("crosscoder:\n  lr: .nan\n", "crosscoder.lr"),
    ("crosscoder:\n  lr: .inf\n", "crosscoder.lr"),
    ("crosscoder:\n  aux_alpha: -.inf\n", "crosscoder.aux_alpha"),
    ("crosscoder:\n  grad_clip: .nan\n", "crosscoder.grad_clip"),
    ("diff:\n  nu_eps_max: .nan\n", "diff.nu_eps_max"),
    ("diff:\n  nu_stable: [-.inf, 2.0]\n", r"diff.nu_stable\[0\]"),
])
def test_non_finite_numbers_are_rejected(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        C.load_config(_write(tmp_path, text))


def test_device_setting(tmp_path):
    cfg = C.load_config(_write(tmp_path, "models:\n  device: cuda:1\n"))
    assert cfg.crosscoder.device == "cuda:1"   # default "models": follows models.device
    cfg = C.load_config(_write(tmp_path, "models:\n  device: cuda\ncrosscoder:\n  device: cpu\n"))
    assert (cfg.models.device, cfg.crosscoder.device, cfg.crosscoder.precision) == ("cuda", "cpu", "auto")
    assert C.load_config(_write(tmp_path, "name: x\n")).crosscoder.device == "cpu"
    for text, key in (("crosscoder:\n  device: gpu\n", "crosscoder.device"), ("models:\n  device: cuda:x\n", "models.device")):
        with pytest.raises(ConfigError, match=f"{key} must be cpu, cuda, cuda:N or mps"):
            C.load_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match="crosscoder.precision"):
        C.load_config(_write(tmp_path, "crosscoder:\n  precision: fp8\n"))
