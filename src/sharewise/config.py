"""The typed configuration tree, validated once at the edge.

Sections: ``data``, ``tasks``, ``split``, ``backbone``, ``method``, ``optim``, ``train``,
``output``. ``backbone``, ``method`` and ``data`` carry plug-in keys that the chosen backbone,
method or source validates with its own options model. Unknown keys and wrong types are
:class:`~sharewise.errors.ConfigError` s naming the key. Integer keys are :data:`Int`: whole numbers,
never booleans, and bounded where a larger value can only be a typing mistake.
"""

from __future__ import annotations

import codecs
import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from .errors import ConfigError, close_matches


def _whole_number(value: Any) -> Any:
    """An integer key's value: an int, or a number with no fractional part (``3.0`` and ``1e3`` are
    3 and 1000); never a boolean (YAML reads ``true`` as one, which pydantic would take as 1) nor ``2.5``."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not a boolean (got {str(value).lower()})")
    if isinstance(value, str):  # YAML 1.1 reads 1e23 (no dot) as text
        try:
            return int(value.strip())
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return value  # pydantic's own message
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"must be a whole number (got {value!r})")
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]
"""The type of every integer config key (see :func:`_whole_number`)."""

# Selection rules by name (train.selection_metric; formulas in engine/selection.py): the default is
# scale-free; "objective" is the rule of earlier releases (and what null means in their configs).
SELECTION_RULES = ("loss_ratio", "objective", "pooled_accuracy")
DEFAULT_SELECTION_RULE = "loss_ratio"

MAX_STEPS = 10**9  # epochs, steps and evaluations beyond this are typing mistakes, not plans
MAX_BATCH = 10**7


def _key_error(key: str, problem: str) -> PydanticCustomError:
    """An error of a model validator that belongs to one of its keys (``_first_error`` names it)."""
    return PydanticCustomError("key_problem", "{problem}", {"key": key, "problem": problem})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Open(BaseModel):
    """A section with plug-in keys (kept in ``model_extra`` and validated by the plug-in)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskSpec(_Strict):
    """One target: ``name`` is the output name, ``column`` the source column (default: name)."""

    name: str
    kind: Literal["categorical", "numerical", "multilabel"]
    column: str | None = None
    loss: Literal["ce", "mse", "l1", "bce"] | None = None
    weight: float = 1.0


class JoinSpec(_Strict):
    """Another table joined to the main one (``data.join``): ``on`` names the key in both tables,
    or ``left_on``/``right_on`` name it in each. Every main-table row is kept (``how: left``;
    missing values where the other table has no row) unless ``how: inner``."""

    path: str
    on: str | None = None
    left_on: str | None = None
    right_on: str | None = None
    how: Literal["left", "inner"] = "left"
    columns: list[str] | None = None  # columns of the joined table to keep (default: all but the key)
    format: Literal["csv", "tsv", "parquet"] | None = None
    sep: str | None = None

    @model_validator(mode="after")
    def _keys(self) -> JoinSpec:
        if self.on is not None and (self.left_on is not None or self.right_on is not None):
            raise ValueError("give either on or left_on/right_on")
        if self.on is None and (self.left_on is None or self.right_on is None):
            raise ValueError("give the join key: on (same name in both tables) or left_on and right_on")
        return self

    @property
    def keys(self) -> tuple[str, str]:
        return (self.on, self.on) if self.on is not None else (self.left_on, self.right_on)


class DataConfig(_Open):
    """Where the examples come from. Table keys apply to every table-backed source."""

    source: str | None = None  # table | digits | ... (default: table when a path is given, else digits)
    path: str | None = None
    test_path: str | None = None
    format: Literal["csv", "tsv", "parquet"] | None = None
    header: bool = True
    columns: list[str] | None = None
    sep: str | None = None
    encoding: str = "utf-8"  # text encoding of CSV/TSV files (and data.join tables), e.g. latin-1
    skip_rows: Int = Field(0, ge=0)  # lines to skip before the header/data
    test_skip_rows: Int | None = Field(None, ge=0)  # the same for test_path (default: skip_rows)
    na_values: list[str] = Field(default_factory=list)
    value_map: dict[str, dict[str, Any]] = Field(default_factory=dict)
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    id_col: str | None = None
    split_col: str | None = None
    group_col: str | None = None
    max_categories: Int = Field(64, ge=1)
    join: list[JoinSpec] = Field(default_factory=list)  # one mapping or a list (data/join.py)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r} (e.g. utf-8, latin-1, cp1252)") from None
        return v

    @field_validator("join", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        v = [v] if isinstance(v, dict) else ([] if v is None else v)
        # YAML 1.1 reads an unquoted key `on` as the boolean True
        return [{("on" if k is True else k): x for k, x in j.items()} if isinstance(j, dict) else j for j in v]

    def for_test_file(self) -> DataConfig:
        """The reading keys for ``test_path``: ``test_skip_rows`` replaces ``skip_rows`` when set."""
        if self.test_skip_rows is None:
            return self
        return self.model_copy(update={"skip_rows": self.test_skip_rows})


class SplitConfig(_Strict):
    ratios: list[float] | None = None  # train/val/test; None: the source's default (tables 0.7/0.15/0.15)
    seed: Int | None = None  # default: train.seed
    stratify: bool = True
    train2_fraction: float = Field(0.5, gt=0, lt=1)


class BackboneConfig(_Open):
    # None: chosen from the data when the run is prepared (backbones.default_backbone: mlp for
    # vectors, convnet for images, resnet3d for volumes) and written into the run's config.yaml
    name: str | None = None


class MethodConfig(_Open):
    name: str = "hard"


class OptimConfig(_Strict):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    backbone_lr: float | None = Field(None, gt=0)  # default: lr
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0)
    schedule: Literal["none", "step", "cosine"] = "none"
    step_size: Int = Field(1000, gt=0, le=MAX_STEPS)  # iterations, for schedule: step
    gamma: float = Field(0.5, gt=0)
    grad_clip: float | None = Field(None, gt=0)


class TrainConfig(_Strict):
    seed: Int = 0
    epochs: Int = Field(20, ge=0, le=MAX_STEPS)  # 0 only with max_steps
    max_steps: Int | None = Field(None, ge=1, le=MAX_STEPS)
    batch_size: Int = Field(64, ge=1, le=MAX_BATCH)
    eval_batch_size: Int = Field(512, ge=1, le=MAX_BATCH)
    patience: Int | None = Field(None, ge=1, le=MAX_STEPS)  # early stopping, in evaluations
    eval_every: Int | None = Field(None, ge=1, le=MAX_STEPS)  # steps; default: once per epoch
    checkpoint_every_s: float = Field(120.0, gt=0)  # a kill loses at most this much work
    log_every: Int = Field(20, ge=1, le=MAX_STEPS)  # steps between training-loss records in metrics.jsonl
    # how a validation evaluation is scored for selection (a reference, when given, selects on Δ_MTL):
    # a rule of SELECTION_RULES (engine/selection.py) or a metric name (its mean over tasks, e.g. accuracy)
    selection_metric: str = DEFAULT_SELECTION_RULE
    exp_ids: list[Int | str] | None = None  # --exp-ids: the candidates to train/test (AdaShare: architecture ids, argmax)
    gpus: list[Int] = Field(default_factory=list)
    procs: Int = Field(1, ge=1)  # CPU processes (gloo); --gpus with several ids starts one per GPU
    sync_bn: bool = False  # SyncBatchNorm across processes (NCCL only; gloo on CPU keeps per-rank statistics)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast for forward passes (fp16 needs CUDA)
    workers: Int = Field(0, ge=0)  # threads building the next training batches ahead (same batches, same order)
    threads: Int | None = Field(None, ge=1)
    # glibc malloc keeps freed memory for the next step (engine.device; process-wide): true always, false
    # never, null the entry point's default (the CLI: yes; the Python API leaves its host's allocator alone)
    keep_host_memory: bool | None = None
    progress: bool = True
    deterministic: bool = True

    @field_validator("selection_metric", mode="before")
    @classmethod
    def _known_metric(cls, v: Any) -> Any:
        from .metrics import METRICS_BY_KIND

        if v is None:  # configs written before the rules had names: null was the validation objective
            return "objective"
        names = {"loss"} | {m.name for ms in METRICS_BY_KIND.values() for m in ms}
        if isinstance(v, str) and v not in names and v not in SELECTION_RULES:
            raise ValueError(f"unknown rule or metric {v!r}{close_matches(v, [*SELECTION_RULES, *names])} "
                             f"(a rule: {', '.join(SELECTION_RULES)}; or a metric: {', '.join(sorted(names))})")
        return v

    @model_validator(mode="after")
    def _trains_at_all(self) -> TrainConfig:
        if self.epochs == 0 and self.max_steps is None:
            raise _key_error("epochs", "must be >= 1 unless train.max_steps is set (0 epochs would select "
                                       "an untrained model)")
        return self


class OutputConfig(_Strict):
    root: str = "runs"
    exp_name: str | None = None
    dir: str | None = None  # --out
    tensorboard: bool = True


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    tasks: list[TaskSpec] = Field(default_factory=list)
    split: SplitConfig = Field(default_factory=SplitConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        seen: dict[str, str] = {}
        for t in v:
            if t.name in seen:
                if seen[t.name] != t.kind:
                    raise ValueError(f"target {t.name!r} is given both as {seen[t.name]} and as {t.kind}")
                raise ValueError(f"target {t.name!r} is given twice")
            seen[t.name] = t.kind
        return v

    def run_dir(self) -> Path:
        if self.output.dir:
            return Path(self.output.dir)
        name = self.output.exp_name or f"{self.method.name}"
        return Path(self.output.root) / name

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------- loading and overrides

_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
           "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}


def _first_error(err: ValidationError, prefix: str = "") -> tuple[str, str]:
    """The first error's dotted key and what is wrong with its value (``must be >= 1 (got 0)``)."""
    first = err.errors()[0]
    parts = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
    if first["type"] == "key_problem":
        parts.append(first["ctx"]["key"])
    loc = ".".join(parts)
    key = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
    bound = _BOUNDS.get(first["type"])
    if bound and bound[0] in first.get("ctx", {}):
        return key, f"must be {bound[1]} {first['ctx'][bound[0]]} (got {first['input']!r})"
    return key, first["msg"].removeprefix("Value error, ")


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    key, problem = _first_error(err, prefix)
    if err.errors()[0]["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    return f"config key {key!r}: {problem}"


def _suggest_key(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    if first["type"] != "extra_forbidden":
        return ""
    loc = [str(p) for p in first["loc"]]
    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    names = getattr(model, "model_fields", {}).keys()
    return close_matches(loc[-1], names)


def validate_config(raw: dict[str, Any]) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(Config.model_fields))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}{close_matches(unknown[0], Config.model_fields)}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        if err.errors()[0]["type"] == "extra_forbidden":
            raise ConfigError(_format_validation_error(err) + _suggest_key(err)) from None
        key, problem = _first_error(err)
        raise ConfigError(_format_validation_error(err), key=key, problem=problem) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the configuration must be a mapping of sections, got a {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_override(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    raw = merge(base or {}, read_yaml(path) if path else {})
    for ov in overrides or []:
        parts, value = parse_override(ov)
        apply_override(raw, parts, value)
    return validate_config(raw)


def save_config(cfg: Config, path: Path) -> None:
    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))


def validate_options(model: type[BaseModel], options: dict[str, Any], section: str) -> BaseModel:
    """Validate a plug-in's keys (``section.<key>``) with its own strict options model."""
    try:
        return model.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        msg = _format_validation_error(err, prefix=f"{section}.")
        if first["type"] == "extra_forbidden":
            msg += close_matches(str(first["loc"][-1]), model.model_fields)
        raise ConfigError(msg) from None
