"""Recipes: one YAML per dataset, validated by pydantic, expanded into one run per (method, seed)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from .checks import safe_component
from .methods import METHODS, Method

__all__ = ["Recipe", "RecipeError", "load_recipe", "apply_overrides", "recipe_of_run", "Method", "DatasetCfg", "ModelCfg", "TrainCfg"]

def _component(v: Optional[str]) -> Optional[str]:
    if v is not None and safe_component(v) is None:
        raise ValueError("expected one folder name: letters, digits and _ . + = - (no '/', no '..', no leading dot)")
    return v


class RecipeError(ValueError):
    "A recipe that cannot be used (one line: file, key, what was expected)."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetCfg(_Strict):
    name: str = Field(description="a loader in cskd_fastai.datasets (cifar100, cub, digits, ...)")
    root: Optional[str] = Field(None, description="dataset root; --data-root overrides; none for digits")
    image_size: int = Field(32, gt=0, le=1024)
    valid_pct: float = Field(0.1, gt=0, lt=0.9, description="stratified validation split carved from train")
    train_per_class: Optional[int] = Field(None, gt=0, description="subsample the training set (fashion_mnist)")
    holdout_classes: Union[PositiveInt, list[str], None] = Field(
        None, description="leave these classes (names, or a count drawn with seed 0) out of training; their test "
                          "images are `eval --ood holdout`'s near-OOD set")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .datasets import DATASETS
        key = v.lower().replace("-", "_")
        if key not in DATASETS: raise ValueError(f"unknown dataset {v!r}; expected one of {sorted(DATASETS)}")
        return key


class ModelCfg(_Strict):
    arch: str = Field(description="a paper model (cifar_resnet18, cifar_densenet121, resnet18, densenet121, "
                                  "small_cnn) or, with head: fastai, a torchvision name / 'timm:NAME'")
    head: Literal["paper", "fastai"] = "paper"
    pretrained: Optional[bool] = Field(None, description="torchvision/timm weights (head: fastai); unset = "
                                       "vision_learner's default (pretrained); the paper models have none")

    @model_validator(mode="after")
    def _exists(self):
        from .models import resolve_arch
        resolve_arch(self.arch, self.head)   # `check` then catches a typo or a missing package, not epoch 0
        return self


class TrainCfg(_Strict):
    epochs: int = Field(gt=0)
    bs: int = Field(gt=1, description="batch size in anchors (CS-KD adds as many partners)")
    lr: float = Field(gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    wd: float = Field(1e-4, ge=0)
    schedule: Literal["paper", "one_cycle", "constant", "fine_tune"] = Field("paper", description="fine_tune: fastai's "
                                                                           "fine_tune (freeze_epochs frozen, the rest unfrozen) as one fit")
    freeze_epochs: int = Field(1, ge=0, description="fine_tune: epochs with the pretrained body frozen (counted in epochs)")
    lr_mult: float = Field(100, gt=0, description="fine_tune: the body's lr is lr/2/lr_mult .. lr/2 once unfrozen")
    pct_start: Optional[float] = Field(None, gt=0, lt=1, description="one_cycle / fine_tune (unfrozen phase): warm-up "
                                       "fraction; unset = fastai's default (0.25 / 0.3)")
    div: Optional[float] = Field(None, gt=0, description="one_cycle / fine_tune (unfrozen phase): initial lr = lr/div; "
                                 "unset = fastai's default (25 / 5)")
    milestones: list[float] = Field([0.5, 0.75], description="paper schedule: lr ÷10 at these fractions of the epochs")
    augment: Literal["none", "flip", "crop", "crop_flip", "resized_crop_flip"] = "crop_flip"
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = Field(False, description="model and input batches (anchors and partners) in channels_last")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager, with a warning, if it fails)")
    gpu_augment: bool = Field(False, description="flip/crop per batch on the device instead of per item in PIL (training only)")
    workers: int = Field(0, ge=0, description="loader worker processes (pinned memory on CUDA when > 0)")
    cache: Literal["none", "memory", "disk"] = Field("none", description="decode and resize every image once "
                                                     "(cskd_fastai.cache): in memory, or a .npy under <out>/.cache")
    select: Literal["last", "best_valid"] = Field("last", description="report the last epoch or the best on VALID")
    drop_last: bool = False
    malloc_trim_every: int = Field(50, ge=0, description="give freed memory back to the OS (glibc malloc_trim) every "
                                   "N training batches and after each epoch; 0: never (cskd_fastai.callbacks.memory)")


    @field_validator("lr", "wd", "momentum")
    @classmethod
    def _finite(cls, v: float) -> float:
        import math
        if not math.isfinite(v): raise ValueError("expected a finite number")
        return v

    @model_validator(mode="after")
    def _fine_tune_epochs(self):
        if self.schedule == "fine_tune" and self.freeze_epochs > self.epochs:
            raise ValueError(f"schedule fine_tune: epochs ({self.epochs}) counts the frozen ones too and must be at "
                             f"least freeze_epochs ({self.freeze_epochs}); equal trains the head only, as fastai's "
                             f"fine_tune(0)")
        return self

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list) -> list:
        if any(not 0 < m < 1 for m in v) or v != sorted(v): raise ValueError("expected increasing fractions in (0, 1)")
        return v


class ShiftCfg(_Strict):
    severities: list[Annotated[int, Field(ge=1, le=5)]] = Field([1, 2, 3, 4, 5], min_length=1)
    max_images: PositiveInt = Field(500, description="a seeded draw of the test images (glass blur is slow)")


class EvalCfg(_Strict):
    "Trust evaluations run right after each seed finishes, written to the run's trust.json (`eval --ood/--shift`)."
    ood: list[str] = Field([], description="folders, registered datasets or 'holdout' (dataset.holdout_classes)")
    ood_max: PositiveInt = 2000
    shift: Optional[ShiftCfg] = None


class Recipe(_Strict):
    name: str
    description: str = ""
    dataset: DatasetCfg
    model: ModelCfg
    train: TrainCfg
    methods: list[Method] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, lt=2 ** 32)]] = Field([0], min_length=1, description="seeds (--seed): "
                                                                  "whole numbers in [0, 2^32)")
    eval: Optional[EvalCfg] = Field(None, description="trust evaluations after each seed (trust.json)")

    _name_safe = field_validator("name")(classmethod(lambda cls, v: _component(v)))

    @model_validator(mode="after")
    def _unique_labels(self):
        labels = [m.run_label for m in self.methods]
        bad = [l for l in labels if safe_component(l) is None]
        if bad: raise ValueError(f"method run label {bad[0]!r} is not a single folder name; set a 'label'")
        dup = sorted({l for l in labels if labels.count(l) > 1})
        if dup: raise ValueError(f"methods share the run label(s) {dup}; give each a distinct 'label'")
        return self

    def runs(self) -> list["Recipe"]:
        "One single-method, single-seed recipe per run, in training order."
        return [self.model_copy(update=dict(methods=[m], seeds=[s]), deep=True) for m in self.methods for s in self.seeds]

    @property
    def method(self) -> Method: return self.methods[0]
    @property
    def seed(self) -> int: return self.seeds[0]

    def to_yaml(self) -> str: return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def recipe_of_run(data: dict, src: str = "recipe.yaml") -> Recipe:
    """The `Recipe` of a run directory's recipe.yaml. Runs written before methods had configs of their own stored
    every method field on every method (`lam` on `ce`, say): keys a method does not know are dropped for them.
    A recipe that still does not validate is one `RecipeError` line naming `src` and the first bad key."""
    try: return _recipe_of_run(data)
    except ValidationError as e: raise RecipeError(_fmt_error(f"{src} (not a valid recipe: restore it or retrain the run)", e)) from None
    except (TypeError, AttributeError): raise RecipeError(f"{src}: not a recipe mapping; restore it or retrain the run") from None


def _recipe_of_run(data: dict) -> Recipe:
    try: return Recipe.model_validate(data)
    except ValidationError:
        data = copy.deepcopy(data)
        known = {name: set(m.model_fields) for name, m in METHODS.items()}
        for m in data.get("methods") or []:
            if isinstance(m, dict) and m.get("name") in known:
                for k in [k for k in m if k not in known[m["name"]]]: m.pop(k)
        return Recipe.model_validate(data)


def _fmt_error(src: str, e: ValidationError) -> str:
    errors = e.errors()
    # a misspelt key shows up twice (the typo is unknown, the real key missing): name the typo first, it is the cause
    errors = sorted(errors, key=lambda x: x["type"] != "extra_forbidden")
    err = errors[0]
    loc = list(err["loc"])
    # pydantic names the union member in the location (methods.0.cskd.temp): users wrote methods.0.temp
    if len(loc) > 2 and loc[0] == "methods" and isinstance(loc[1], int) and isinstance(loc[2], str) \
            and loc[2] in METHODS: del loc[2]
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden": msg = "unknown key (check its spelling against recipes/*.yaml)"
    elif err["type"] == "missing": msg = "required key is missing"
    quiet = err["type"] in ("missing", "extra_forbidden") or ", got " in msg   # the message already says it
    got = "" if quiet else f" (got {err.get('input')!r})"
    more = ""
    if len(errors) > 1:
        others = [".".join(str(p) for p in x["loc"] if not (isinstance(p, str) and p in METHODS)) for x in errors[1:4]]
        more = f" [also: {', '.join(others)}{' ...' if len(errors) > 4 else ''}]"
    return f"{src}: {key}: {msg}{got}{more}"


def _parse_value(v: str):
    try: return yaml.safe_load(v)
    except yaml.YAMLError: return v


def apply_overrides(data: dict, overrides: list[str], src: str = "--set") -> dict:
    "Apply `key.sub=value` overrides (values parsed as YAML; `methods.0.lam=3` indexes lists)."
    data = copy.deepcopy(data)
    for ov in overrides or []:
        if "=" not in ov: raise RecipeError(f"{src} {ov!r}: expected key=value, e.g. train.epochs=10")
        key, val = ov.split("=", 1)
        parts, node = key.strip().split("."), data
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise RecipeError(f"{src} {key}: {p!r} is not an index of a {len(node)}-item list")
                if last: node[int(p)] = _parse_value(val)
                else: node = node[int(p)]
            elif isinstance(node, dict):
                if last: node[p] = _parse_value(val)
                else: node = node.setdefault(p, {})
            else: raise RecipeError(f"{src} {key}: {'.'.join(parts[:i])} is not a mapping")
    return data


def load_recipe(path: Union[str, Path], overrides: Optional[list[str]] = None) -> Recipe:
    "Read, override and validate a recipe; any problem is one `RecipeError` line naming file and key."
    path = Path(path)
    if not path.exists(): raise RecipeError(f"{path}: recipe file not found (see recipes/*.yaml)")
    if not path.is_file(): raise RecipeError(f"{path}: is a directory, not a recipe file; pass a .yaml file such as "
                                             f"recipes/quickstart.yaml")
    try: data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict): raise RecipeError(f"{path}: expected a mapping of recipe keys, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [], src=f"{path}: --set")
    try: return Recipe.model_validate(data)
    except ValidationError as e: raise RecipeError(_fmt_error(str(path), e)) from None
