"""The model's own sampling defaults: what its `generation_config.json` sets for the parameters a request leaves out.

A checkpoint's authors often ship the sampling they tuned it for (an instruct model with temperature 0.7 and
top_p 0.8, say). As vLLM does with `--generation-config auto`, a request that does not set temperature, top_p,
top_k, min_p or repetition_penalty gets the model's value instead of OpenAI's default; a value the request sets,
even to the API default, wins. Only keys the file itself lists count (transformers' GenerationConfig would fill
in its own defaults, such as top_k=50, that the model never asked for), and a value outside the range a request
may use (api/schemas/sampling.py) is ignored with a warning.

    --generation-config auto    the model directory's generation_config.json (absent: no defaults)
    --generation-config none    no defaults (`vllm`, vLLM's spelling of the same, is accepted too)
    --generation-config DIR     DIR/generation_config.json
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import orjson
import structlog
from pydantic import ValidationError

from service.api.schemas.sampling import SamplingFields
from service.errors import StartupError

log = structlog.get_logger("sampling_defaults")

FILE_NAME = "generation_config.json"
NO_DEFAULTS = ("none", "vllm")

# The parameters a model may default.
KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def config_file(setting: str, model_dir: str) -> Path | None:
    """The file `--generation-config setting` reads, None for no defaults; StartupError for a DIR without one.
    Touches only the file system, so the command line is checked with it before the model loads."""
    if setting in NO_DEFAULTS:
        return None
    if setting == "auto":
        path = Path(model_dir) / FILE_NAME
        return path if path.is_file() else None
    path = Path(setting) / FILE_NAME
    if not path.is_file():
        raise StartupError(f"--generation-config {setting}: expected auto, none or a directory holding a {FILE_NAME}")
    return path


def load_sampling_defaults(setting: str, model_dir: str) -> Mapping[str, float | int]:
    """The defaults `--generation-config setting` asks for; {} for none. A DIR without the file, or a file that is
    not a JSON object, is a StartupError."""
    path = config_file(setting, model_dir)
    if path is None:
        return {}
    try:
        config = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise StartupError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise StartupError(f"{path}: expected a JSON object")
    defaults: dict[str, float | int] = {}
    for key in KEYS:
        if config.get(key) is None:
            continue
        try:  # the range and type a request's own value must have
            SamplingFields.model_validate({key: config[key]})
            defaults[key] = config[key]
        except ValidationError:
            log.warning("ignoring a sampling default outside the range a request may use", file=str(path),
                        key=key, value=config[key])
    if defaults:
        log.info("sampling defaults from the model's generation config; requests that leave these out get them",
                 file=str(path), **defaults)
    return defaults
