"""The recipe schema: pydantic models of every section (data, threat, teacher, student, deploy, verify) and of
export profiles. Each field's default and ``#`` comment are what ``docs/reference/recipe.md`` shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, model_validator

from rkd.config.values import SCHEMA_VERSION, Eps, StrictModel
from rkd.errors import RecipeError, UsageError


class DataConfig(StrictModel):
    """What to train and evaluate on. ``dataset``: cifar10 | cifar100 | npz | imagefolder | synthetic."""

    dataset: str = "cifar10"
    root: str | None = None  # download/cache folder (cifar*); a folder of {train,test}.npz also works
    path: str | None = None  # npz file/folder or image folder
    train_subset: int | None = Field(None, ge=1)  # seeded random subset of the training set
    holdout: int = Field(500, ge=0)  # training images held out for periodic evaluation
    batch_size: int = Field(128, ge=1)  # global batch size (split across DDP ranks)
    augment: bool = True  # in memory: random crop (pad 4) + flip; streamed: random resized crop + flip
    synthetic_n: int = Field(512, ge=16)  # size of the synthetic training set (tests)
    num_classes: int | None = Field(None, ge=2)  # synthetic/npz only; inferred otherwise
    image_size: int | None = Field(None, ge=8)  # side of the model's input (imagefolder, synthetic); default 32
    # imagefolder evaluation: resize the shorter side to image_size / crop_ratio, center-crop image_size (0.875:
    # 224 from 256); default 0.875 above 64 px, else a plain resize to the square
    crop_ratio: float | None = Field(None, gt=0, le=1)
    stream: Literal["auto"] | bool = "auto"  # imagefolder training: decode from disk (auto: above 64 px or 1 GiB)
    num_workers: int | None = Field(None, ge=0)  # DataLoader workers when streaming (default: CPUs - 1, at most 8)

    def resolved_crop_ratio(self) -> float | None:
        """The evaluation crop ratio of an image folder: ``crop_ratio``, else 0.875 above 64 px, else None."""
        if self.crop_ratio is not None:
            return self.crop_ratio
        from rkd.data.imagefolder import default_crop_ratio

        return default_crop_ratio(self.image_size or 32)

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`rkd.data.load_dataset`."""
        opts: dict[str, Any] = {}
        if self.dataset in ("npz", "imagefolder"):
            if not self.path:
                raise RecipeError(f"data.path is required for dataset '{self.dataset}': set it in the recipe or "
                                  f"with --set data.path=PATH")
            opts["path"] = self.path
        if self.dataset == "imagefolder":
            opts["image_size"] = self.image_size or 32
            crop = self.resolved_crop_ratio()
            if crop is not None:
                opts["crop_ratio"] = crop
        if self.dataset == "synthetic":
            if self.num_classes:
                opts["num_classes"] = self.num_classes
            if self.image_size:
                opts["image_size"] = self.image_size
        return opts


class ThreatConfig(StrictModel):
    """The evaluation threat model (METHOD.md): L-inf eps 8/255, PGD step 2/255."""

    norm: Literal["linf", "l2"] = "linf"
    eps: Eps = 8 / 255
    alpha: Eps = 2 / 255


class ModelConfig(StrictModel):
    """A registered architecture (``rkd.models.list_models()``) and its size knobs."""

    name: str
    width: float = Field(1.0, gt=0)
    depth: int | None = None
    widen_factor: int | None = None


class AttackConfig(StrictModel):
    """The inner maximisation of adversarial training (PGD-10, eps 8/255, step 2/255 by default)."""

    eps: Eps = 8 / 255
    alpha: Eps = 2 / 255
    steps: int = Field(10, ge=1)
    norm: Literal["linf", "l2"] = "linf"


class PgdAtConfig(AttackConfig):
    """PGD-AT (Madry et al. 2018): CE on x_adv = PGD-k on CE from a uniform random start."""

    name: Literal["pgd_at"] = "pgd_at"
    start: Literal["random", "zero", "gaussian"] = "random"


class TradesConfig(AttackConfig):
    """TRADES (Zhang et al. 2019): CE(x) + beta KL(p(x) || p(x_adv)); x_adv maximises the KL from x + 0.001 N."""

    name: Literal["trades"] = "trades"
    beta: float = Field(6.0, ge=0)


TeacherMethodConfig = Annotated[Union[PgdAtConfig, TradesConfig], Field(discriminator="name")]


class ArdConfig(AttackConfig):
    """ARD (Goldblum et al. 2020): a tau^2 KL(p_T(x)/tau || p_S(x_adv)/tau) + (1 - a) CE(S(x), y); x_adv = PGD-k on
    CE(S(.), y) from a uniform random start, the student in train mode (as the reference code)."""

    name: Literal["ard"] = "ard"
    temperature: float = Field(30.0, gt=0)
    kd_weight: float = Field(1.0, ge=0, le=1)  # "a" (alpha) in the paper


class IadConfig(AttackConfig):
    """IAD (Zhu et al. 2022): ARD for ``warmup_epochs`` epochs, then adds a (1 - A) KL(p_S(x) || p_S(x_adv)) with
    the per-sample teacher reliability A = p_T(x_adv)_y ** beta."""

    name: Literal["iad"] = "iad"
    temperature: float = Field(1.0, gt=0)
    kd_weight: float = Field(1.0, ge=0, le=1)
    warmup_epochs: int = Field(60, ge=0)
    beta: float = Field(0.1, ge=0)


class RsladConfig(AttackConfig):
    """RSLAD (Zi et al. 2021): x_adv maximises KL(p_T(x) || p_S(x')) from x + 0.001 N; loss
    (1 - lambda_nat) KL(p_T(x) || p_S(x_adv)) + lambda_nat KL(p_T(x) || p_S(x))."""

    name: Literal["rslad"] = "rslad"
    lambda_nat: float = Field(1 / 6, ge=0, le=1)


class AdaadConfig(AttackConfig):
    """AdaAD (Huang et al. 2023): x_adv maximises KL(p_T(x') || p_S(x')) (teacher re-evaluated at x'); loss
    a KL(p_T(x_adv) || p_S(x_adv)) + (1 - a) KL(p_T(x) || p_S(x))."""

    name: Literal["adaad"] = "adaad"
    kd_weight: float = Field(1.0, ge=0, le=1)


# Named settings of adv_path's knobs: ``student.method.preset: NAME`` fills every knob the recipe does not set
# itself. ``kl_linear_sum`` is the default (docs/METHOD.md, "What rkd ships, and why"): the untargeted path climbs
# RSLAD's KL to the teacher's clean output, every iterate is aligned to that output with weight k/m, summed.
# ``reconstruction`` is the first reading of the paper rkd shipped (a per-sample weighted mean over the iterates
# of a CE path, teacher-measured weights, aligned at the same point, both branches at equal weight).
ADV_PATH_PRESETS: dict[str, dict[str, Any]] = {
    "kl_linear_sum": {
        "path_model": "student", "target": "random", "step_loss": "kl", "iterate_stride": 1,
        "align_target": "clean", "weights": "linear", "weight_model": "teacher", "aggregate": "sum",
        "reliability": False, "gamma": 0.0, "lambda_nat": 1 / 6, "temperature": 1.0, "crafting_mode": "eval",
    },
    "reconstruction": {
        "path_model": "student", "target": "random", "step_loss": "ce", "iterate_stride": 1,
        "align_target": "same_point", "weights": "prob_change", "weight_model": "teacher", "aggregate": "mean",
        "reliability": False, "gamma": 1.0, "lambda_nat": 1 / 6, "temperature": 1.0, "crafting_mode": "eval",
    },
}


class AdvPathConfig(AttackConfig):
    """The adversarial-path method (Dong et al., CVPR 2024; docs/METHOD.md): align teacher and student on the
    intermediate iterates of an untargeted (and, with ``gamma`` > 0, a targeted) PGD path, weighted along it.
    The defaults are the ``kl_linear_sum`` preset.

    ``steps`` is m (iterates per branch); ``alpha`` the step; ``eps`` the radius; ``preset`` a named set of the
    knobs below (:data:`ADV_PATH_PRESETS`; a knob the recipe sets itself wins).
    """

    name: Literal["adv_path"] = "adv_path"
    preset: Literal["kl_linear_sum", "reconstruction"] | None = None
    path_model: Literal["student", "teacher"] = "student"
    target: Literal["random", "runner_up", "least_likely"] = "random"  # target class of branch T
    # ascended by branch U: CE(y), the CW margin, or KL(p_T(x) || p_S(x')) (RSLAD's); branch T descends CE(t)
    # (its CW margin with cw)
    step_loss: Literal["ce", "cw", "kl"] = "kl"
    iterate_stride: int = Field(1, ge=1)  # use every r-th iterate plus the last (1: all m)
    align_target: Literal["same_point", "clean"] = "clean"  # teacher at the iterate, or at clean x
    weights: Literal["prob_change", "uniform", "linear", "entropy"] = "linear"  # weight of iterate k (linear: k/m)
    # whose true-class (target-class) probability change prob_change measures: the teacher's, or the model that
    # crafted the path (the student by default) as it was while crafting
    weight_model: Literal["teacher", "path"] = "teacher"
    # over a sample's iterates: "mean" renormalises its weights to sum 1; "sum" keeps them (batch-max scale)
    aggregate: Literal["mean", "sum"] = "sum"
    reliability: bool = False  # multiply weights by p_T(x_b[k])_{argmax p_T(x)} ** reliability_beta
    reliability_beta: float = Field(0.1, ge=0)
    gamma: float = Field(0.0, ge=0, le=1)  # weight of branch T against branch U (0: targeted branch off)
    lambda_nat: float = Field(1 / 6, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    crafting_mode: Literal["eval", "train"] = "eval"  # student mode while crafting the path
    max_batch: int | None = Field(None, ge=1)  # chunk the alignment passes (None: one pass on GPU, B on CPU)
    low_memory: bool = False  # backpropagate each chunk on its own: same gradient, the memory of one chunk

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in ADV_PATH_PRESETS:
            return {**ADV_PATH_PRESETS[data["preset"]], **data}
        return data


DistillMethodConfig = Annotated[
    Union[AdvPathConfig, ArdConfig, IadConfig, RsladConfig, AdaadConfig, PgdAtConfig, TradesConfig],
    Field(discriminator="name"),
]


class TrainConfig(StrictModel):
    """The shared training loop: SGD, schedule, precision, evaluation and checkpoint cadence."""

    epochs: int = Field(200, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] | None = None  # epochs; default: 1/2 and 3/4 of the run (100, 150 of 200)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    amp: Literal["auto", "off", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, off on CPU; bf16: also on CPU (AMX)
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA and CPU
    # torch.compile the inner attack's model; auto: time eager and compiled steps on long runs, keep the faster
    compile_attack: Literal["auto"] | bool = "auto"
    eval_every: int = Field(1, ge=0)  # epochs between held-out evaluations (0: only at the end)
    eval_n: int = Field(500, ge=0)  # held-out images evaluated (at most data.holdout)
    eval_pgd_steps: int = Field(20, ge=1)  # PGD-k of the periodic evaluation
    checkpoint_every_steps: int | None = Field(None, ge=1)  # also checkpoint mid-epoch
    log_every: int = Field(20, ge=1)  # steps between metrics lines
    grad_clip: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainConfig:
        if self.milestones is not None:
            if sorted(self.milestones) != self.milestones or any(m < 1 for m in self.milestones):
                raise ValueError("milestones must be increasing epoch numbers >= 1")
        return self

    def resolved_milestones(self) -> list[int]:
        """Milestones in epochs; the default halves the run at 1/2 and 3/4 (the literature's 100/150 of 200)."""
        if self.milestones is not None:
            return list(self.milestones)
        return sorted({max(1, self.epochs // 2), max(1, (self.epochs * 3) // 4)})


class TeacherConfig(StrictModel):
    """Train a robust teacher (PGD-AT or TRADES) or load one (``checkpoint``)."""

    model: ModelConfig
    checkpoint: str | None = None
    method: TeacherMethodConfig = Field(default_factory=PgdAtConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


class StudentConfig(StrictModel):
    """The student of ``rkd distill``: its architecture and how it is distilled."""

    model: ModelConfig
    method: DistillMethodConfig = Field(default_factory=AdvPathConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(weight_decay=2e-4))

    @model_validator(mode="after")
    def _iad_leaves_its_warmup(self) -> StudentConfig:
        if isinstance(self.method, IadConfig) and self.method.warmup_epochs >= self.train.epochs:
            raise ValueError(
                f"method.warmup_epochs ({self.method.warmup_epochs}) >= train.epochs ({self.train.epochs}): IAD would "
                "never leave its ARD warm-up; lower student.method.warmup_epochs"
            )
        return self


def _check_gates(gates: list[str]) -> list[str]:
    from rkd.verify.gates import parse_gate

    for text in gates:
        try:
            parse_gate(text)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
    return gates


Gates = Annotated[list[str], AfterValidator(_check_gates)]


class VerifyConfig(StrictModel):
    """``rkd verify`` settings: samples, attacks, gates (DESIGN.md, "Verification semantics")."""

    n: int = Field(1000, ge=1)  # test samples (the first n; gates need at least this many)
    sample: Literal["first", "random"] = "first"
    attacks: str = "pgd20,autoattack"
    eps: Eps | None = None  # default: the recipe's / bundle's threat model
    gates: Gates = Field(default_factory=list)  # e.g. "lower.robust_acc>=0.30", "drop.robust_acc<=0.03"
    fail_on_warnings: bool = False
    transfer: bool = True  # also attack with the float reference's adversarial examples
    # judge gates without a floor on robust accuracy (drops/agreement only: they cannot fail a non-robust model);
    # a recipe's or the command line's choice, never a profile's
    allow_no_floor: bool = False

    @model_validator(mode="after")
    def _check_attacks(self) -> VerifyConfig:
        from rkd.verify.suite import parse_attacks

        try:
            parse_attacks(self.attacks)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return self


class ProfileQuantize(StrictModel):
    """INT8 post-training quantization of a profile (ONNX Runtime static QDQ; see rkd quantize)."""

    scheme: Literal["cpu", "trt"] = "cpu"  # cpu: uint8 asymmetric activations; trt: symmetric int8
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_n: int = Field(512, ge=1)
    exclude: list[str] = Field(default_factory=list)  # ONNX node names kept in float


class ProfileEngine(StrictModel):
    """A TensorRT engine build (shapes of the one optimization profile, workspace)."""

    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(32, ge=1)
    max_batch: int = Field(256, ge=1)
    workspace_gib: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> ProfileEngine:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("need min_batch <= opt_batch <= max_batch")
        return self


class ExportProfile(StrictModel):
    """A deployment target (``export/*.yaml``): runtime, precision, quantization, engine shapes, gates."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    runtime: Literal["onnxruntime", "tensorrt"]
    precision: Literal["int8", "fp16", "fp32"]
    quantize: ProfileQuantize | None = None
    engine: ProfileEngine | None = None
    verify: VerifyConfig = Field(default_factory=VerifyConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ExportProfile:
        if self.verify.allow_no_floor:
            raise ValueError("verify.allow_no_floor is a recipe's or the command line's choice (a floor depends on "
                             "the model), not a profile's")
        if self.precision == "int8" and self.quantize is None:
            raise ValueError("precision int8 needs a quantize section")
        if self.precision != "int8" and self.quantize is not None:
            raise ValueError(f"precision {self.precision} takes no quantize section")
        if self.runtime == "tensorrt" and self.engine is None:
            raise ValueError("runtime tensorrt needs an engine section")
        if self.runtime == "onnxruntime" and self.engine is not None:
            raise ValueError("runtime onnxruntime takes no engine section")
        if self.runtime == "onnxruntime" and self.precision == "fp16":
            raise ValueError("fp16 is a TensorRT profile; use fp32 or int8 with onnxruntime")
        if self.runtime == "tensorrt" and self.quantize is not None and self.quantize.scheme != "trt":
            raise ValueError("TensorRT builds symmetric INT8 only: quantize.scheme must be trt")
        return self

    @property
    def artifact(self) -> str:
        """The bundle file this profile ships and verifies (an engine's name is known only after the build)."""
        if self.runtime == "tensorrt":
            return "engine"
        return "model.int8.onnx" if self.precision == "int8" else "model.onnx"


class DeployConfig(StrictModel):
    """``rkd run``'s deployment stages: which export profile, and robust QAT before export when wanted."""

    profile: str = "x86-cpu-int8"  # a name in export/ or a path to a profile YAML
    calibration_n: int | None = Field(None, ge=1)  # overrides the profile's quantize.calibration_n
    qat: bool = False
    qat_epochs: int = Field(1, ge=1)
    qat_lr: float = Field(0.01, gt=0)
    qat_train_n: int | None = Field(None, ge=1)


class Recipe(StrictModel):
    """A whole recipe file: data, threat model, teacher, student, and the deploy/verify stages of rkd run."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = Field(default_factory=DataConfig)
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    teacher: TeacherConfig | None = None
    student: StudentConfig | None = None
    deploy: DeployConfig | None = None
    verify: VerifyConfig | None = None
