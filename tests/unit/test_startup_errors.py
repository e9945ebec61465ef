"""Start-up refusals print one line and exit 2 rather than a traceback."""

from __future__ import annotations

from service.__main__ import main


def test_a_model_path_without_a_checkpoint_is_refused_before_loading(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hfserve: --model {tmp_path / 'missing'}: no config.json there")
    assert "downloads nothing" in err


def test_a_missing_tokenizer_directory_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(["--model", str(tiny_model_dir), "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_a_generation_config_directory_without_the_file_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(["--model", str(tiny_model_dir), "--generation-config", str(tmp_path)]) == 2
    assert "--generation-config" in capsys.readouterr().err
