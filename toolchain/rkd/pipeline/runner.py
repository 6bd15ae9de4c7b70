"""The :class:`Pipeline` of ``rkd run``: each stage a recipe names, skipped when its key and artifact are unchanged
(the package docstring describes the stages and the run directory)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rkd.atomic import atomic_write_text, file_sha256
from rkd.config import ExportProfile, Recipe, dump_recipe, load_profile, resolve_device
from rkd.errors import RecipeError, UsageError
from rkd.pipeline.record import (
    PREVIOUS,
    STAGE_FOLDERS,
    RunResult,
    StageResult,
    _dump,
    _files,
    _key,
    _locked,
    _moved,
    _names,
    _Record,
)


def _history_metrics(result: Any) -> dict[str, Any]:
    last = (result.history or [{}])[-1]
    return {f"holdout_{k}": v for k, v in last.items() if k.endswith("_acc")}


class Pipeline:
    """Runs a recipe's stages (see the module docstring). ``progress`` makes a fresh progress display for each
    training stage; ``log`` receives one line per event."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        run_dir: str | Path | None = None,
        data_root: str | None = None,
        device: str | None = None,
        resume: bool = False,
        profile_base: str | Path | None = None,
        progress: Callable[[], Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
        self.data_root = data_root
        self.device = resolve_device(device or recipe.device)
        self.resume = resume
        self.progress = progress
        self.log = log or (lambda _m: None)
        self.profile: ExportProfile | None = (
            load_profile(recipe.deploy.profile, base=profile_base) if recipe.deploy is not None else None)
        if recipe.verify is not None and recipe.deploy is None:
            raise RecipeError(f"{recipe.name}: a verify section needs a deploy section (what to verify)")
        verify_cfg = recipe.verify or (self.profile.verify if self.profile is not None else None)
        if verify_cfg is not None:  # a gate the verify stage could not judge fails now, not after training
            from rkd.verify.gates import parse_gate
            from rkd.verify.suite import check_suite, parse_attacks
            from rkd.verify.verification import check_gates_measurable

            try:
                check_gates_measurable([parse_gate(g) for g in verify_cfg.gates], parse_attacks(verify_cfg.attacks),
                                       has_reference=True, transfer=verify_cfg.transfer)
            except UsageError as exc:
                raise RecipeError(f"{recipe.name}: verify: {exc}") from None
            check_suite(parse_attacks(verify_cfg.attacks), seed=recipe.seed)  # e.g. pyautoattack, before training
        if verify_cfg is not None and not verify_cfg.gates and not verify_cfg.fail_on_warnings:
            where = "verify.gates" if recipe.verify is not None else f"profile {recipe.deploy.profile}'s verify.gates"
            raise RecipeError(f"{recipe.name}: {where} is empty, so verify could not fail: name at least one gate "
                              "(e.g. 'drop.robust_acc<=0.03'), or set fail_on_warnings")
        if verify_cfg is not None:  # a gate set a model without robustness passes: refused unless opted out
            from rkd.verify.gates import check_floor, parse_gate

            where = "verify.gates" if recipe.verify is not None else (
                f"a verify section (profile {recipe.deploy.profile}'s gates hold none)")
            try:
                check_floor([parse_gate(g) for g in verify_cfg.gates], allow_no_floor=verify_cfg.allow_no_floor,
                            fix=f"add e.g. 'robust_acc>=0.40' (what the model must keep) to {where}, or set "
                                "verify.allow_no_floor: true")
            except UsageError as exc:
                raise RecipeError(f"{recipe.name}: verify: {exc}") from None
        self.record = _Record(self.run_dir)
        self.stages: list[StageResult] = []

    # -- one stage ---------------------------------------------------------------------------------------------
    def _stage(self, name: str, key: str, run: Callable[[bool], tuple[Path, dict[str, Any]]],
               clean: list[Path] | None = None) -> Path:
        """Skip ``name`` when ``key`` and its artifact are unchanged, else run it (resuming when allowed).

        ``clean`` (at most the stage's one folder) is started afresh when the stage reruns: a complete output
        waits in ``<folder>.previous`` until the new one is complete (replacing an older one kept there), an
        output cut short is discarded and never replaces it, and a kept output whose key is ``key`` is put back
        instead of running the stage again."""
        if self.record.up_to_date(name, key):
            entry = self.record.stage(name)
            self.stages.append(StageResult(name, "skipped", 0.0, entry["artifact"], entry.get("metrics") or {}))
            self.log(f"{name}: up to date, skipped")
            return Path(entry["artifact"])
        entry = self.record.stage(name)
        resuming = self.resume and entry.get("key") == key and not entry.get("done")
        folder = (clean or [None])[0]
        if folder is not None and not resuming:
            restored = self._restore(name, key, folder, entry)
            if restored is not None:
                return restored
            self._set_aside(name, folder, entry)
        self.record.set(name, {"key": key, "done": False})
        self.log(f"{name}: {'resuming' if resuming else 'running'}")
        t0 = time.perf_counter()
        try:
            artifact, metrics = run(resuming)
        except BaseException:
            previous = folder.with_name(folder.name + PREVIOUS) if folder is not None else None
            if previous is not None and previous.is_dir():
                self.log(f"{name}: failed; its last complete output is kept in {previous}")
            raise
        seconds = time.perf_counter() - t0
        done = {"key": key, "done": True, "artifact": str(artifact), "sha256": file_sha256(artifact),
                "metrics": metrics, "seconds": round(seconds, 2)}
        if folder is not None:
            done["files"] = _files(folder) if folder.is_dir() else []
        self.record.set(name, done)
        if folder is not None:  # the new output is complete: the one kept aside goes
            previous = folder.with_name(folder.name + PREVIOUS)
            if previous.is_dir():
                shutil.rmtree(previous)
            self.record.set_previous(name, None)
        self.stages.append(StageResult(name, "resumed" if resuming else "ran", seconds, str(artifact), metrics))
        return artifact

    def _set_aside(self, name: str, folder: Path, entry: dict[str, Any]) -> None:
        """Free ``folder`` for a fresh run of ``name``: a complete output goes to ``<folder>.previous``; one cut
        short (its stage not done) is removed, keeping the last complete output where it waits."""
        if not folder.is_dir():
            return
        previous = folder.with_name(folder.name + PREVIOUS)
        if entry.get("done"):
            if previous.is_dir():
                shutil.rmtree(previous)  # an older complete output: this one is newer
            folder.rename(previous)
            kept = dict(entry, artifact=_moved(entry.get("artifact"), folder, previous))
            self.record.set_previous(name, kept)
        else:
            shutil.rmtree(folder)

    def _restore(self, name: str, key: str, folder: Path, entry: dict[str, Any]) -> Path | None:
        """Put the kept output of ``name`` back when it was made with ``key`` and is intact; else None."""
        kept = self.record.previous(name)
        previous = folder.with_name(folder.name + PREVIOUS)
        artifact = kept.get("artifact")
        if entry.get("done") or kept.get("key") != key or not artifact or not previous.is_dir():
            return None
        if not Path(artifact).is_file() or file_sha256(artifact) != kept.get("sha256"):
            return None
        if folder.is_dir():
            shutil.rmtree(folder)  # what the failed rerun left
        previous.rename(folder)
        entry = dict(kept, artifact=_moved(artifact, previous, folder))
        self.record.set(name, entry)
        self.record.set_previous(name, None)
        self.stages.append(StageResult(name, "restored", 0.0, entry["artifact"], entry.get("metrics") or {}))
        self.log(f"{name}: inputs as for the output kept in {previous}: restored, not run again")
        return Path(entry["artifact"])

    def _check_stage_folders(self) -> None:
        """Refuse, before any stage runs, a stage folder (or one kept aside) holding files rkd did not write: a
        rerun would replace the folder. The bundle may hold only the files its manifest lists."""
        from rkd.train.rundir import RUN_FILES
        from rkd.verify.report import report_names

        own = {"teacher": {*RUN_FILES, ".lock"}, "distill": {*RUN_FILES, ".lock"},
               "verify": set(report_names(curve=True))}
        for stage, name in STAGE_FOLDERS.items():
            for folder, entry in ((self.run_dir / name, self.record.stage(stage)),
                                  (self.run_dir / (name + PREVIOUS), self.record.previous(stage))):
                if not folder.is_dir():
                    continue
                listed = set(entry.get("files") or [])
                foreign = [f for f in _files(folder) if not (
                    f in listed or f in own[stage] or (stage == "verify" and f.startswith("state/"))
                    or (f.rsplit("/", 1)[-1].startswith(".") and f.endswith(".tmp")))]
                if foreign:
                    raise UsageError(f"'{folder}' holds {_names(foreign)}, which rkd did not write: rkd run replaces "
                                     "this folder when its stage reruns; move them out of the run folder first")
        bundle = self.run_dir / "bundle"
        if bundle.is_dir():
            from rkd.deploy.bundle import check_replaceable

            try:
                check_replaceable(bundle)
            except UsageError:
                raise UsageError(f"'{bundle}' holds files that are not its bundle's (not in its manifest.json): rkd "
                                 "run replaces the bundle when the export reruns; move them out of the run folder "
                                 "first") from None

    # -- the stages --------------------------------------------------------------------------------------------
    def _teacher(self) -> Path | None:
        rec = self.recipe
        if rec.teacher is None:
            return None
        if rec.teacher.checkpoint:
            path = Path(rec.teacher.checkpoint)
            if not path.is_file():
                raise RecipeError(f"{rec.name}: teacher.checkpoint '{path}' not found")
            self.stages.append(StageResult("teacher", "given", 0.0, str(path), {}))
            return path
        from rkd.train.teacher import train_teacher

        out = self.run_dir / "teacher"
        key = _key("teacher", _dump(rec.teacher), _dump(rec.data), _dump(rec.threat), rec.seed)

        def run(resume: bool) -> tuple[Path, dict[str, Any]]:
            result = train_teacher(rec, run_dir=out, resume=resume, device=self.device, data_root=self.data_root,
                                   progress=self.progress() if self.progress else None)
            return result.checkpoint, _history_metrics(result)

        return self._stage("teacher", key, run, clean=[out])

    def _distill(self, teacher: Path | None) -> Path | None:
        rec = self.recipe
        if rec.student is None:
            return None
        from rkd.train.student import distill_student

        out = self.run_dir / "student"
        key = _key("distill", _dump(rec.student), _dump(rec.data), _dump(rec.threat), rec.seed,
                   file_sha256(teacher) if teacher is not None else None)

        def run(resume: bool) -> tuple[Path, dict[str, Any]]:
            result = distill_student(rec, run_dir=out, teacher=teacher, resume=resume, device=self.device,
                                     data_root=self.data_root, progress=self.progress() if self.progress else None)
            return result.checkpoint, _history_metrics(result)

        return self._stage("distill", key, run, clean=[out])

    def _data_arg(self) -> tuple[str, dict[str, Any]]:
        opts = self.recipe.data.options()
        return self.recipe.data.dataset, opts

    def _export(self, student: Path) -> Path:
        from rkd.deploy.export import export_bundle

        bundle = self.run_dir / "bundle"
        key = _key("export", file_sha256(student), self._data_arg())

        def run(resume: bool) -> tuple[Path, dict[str, Any]]:
            manifest = export_bundle(student, bundle, force=True, parity_data=self._data_arg(),
                                     data_root=self.data_root or self.recipe.data.root)
            parity = (manifest.get("export") or {}).get("parity") or {}
            return bundle / "model.onnx", {"max_abs_diff": parity.get("max_abs_diff"),
                                           "top1_agreement": parity.get("top1_agreement")}

        return self._stage("export", key, run)

    def _quantize(self, student: Path, float_onnx: Path, teacher: Path | None) -> Path:
        from rkd.quantize.pipeline import run_quantize
        from rkd.quantize.request import QatOptions, QuantizeRequest

        assert self.profile is not None and self.profile.quantize is not None and self.recipe.deploy is not None
        q, deploy = self.profile.quantize, self.recipe.deploy
        key = _key("quantize", _dump(q), _dump(deploy), file_sha256(float_onnx), self._data_arg(), self.recipe.seed,
                   file_sha256(teacher) if deploy.qat and teacher is not None else None)

        def run(resume: bool) -> tuple[Path, dict[str, Any]]:
            method = self.recipe.student.method.name if self.recipe.student else "adv_path"
            qat = QatOptions(method=method, epochs=deploy.qat_epochs, lr=deploy.qat_lr, teacher=teacher,
                             train_n=deploy.qat_train_n) if deploy.qat else None
            request = QuantizeRequest(
                checkpoint=Path(student), bundle=float_onnx.parent, scheme=q.scheme, method=q.method,
                calib_data=self._data_arg(), calib_n=deploy.calibration_n or q.calibration_n,
                data_root=self.data_root or self.recipe.data.root, eval_n=0, force=True, seed=self.recipe.seed,
                nodes_to_exclude=tuple(q.exclude or ()), device=self.device, qat=qat,
            ).validate()
            section = run_quantize(request)
            agree = ((section.get("surrogate") or {}).get("agreement") or {}).get("top1_agreement")
            return float_onnx.parent / "model.int8.onnx", {"surrogate_agreement": agree}

        return self._stage("quantize", key, run)

    def _engine(self, onnx_path: Path) -> Path:
        from rkd.deploy.tensorrt_build import build_bundle_engine

        assert self.profile is not None and self.profile.engine is not None
        eng, precision = self.profile.engine, self.profile.precision
        key = _key("engine", _dump(eng), precision, file_sha256(onnx_path))

        def run(resume: bool) -> tuple[Path, dict[str, Any]]:
            info = build_bundle_engine(onnx_path.parent, precision=precision, min_batch=eng.min_batch,
                                       opt_batch=eng.opt_batch, max_batch=eng.max_batch,
                                       workspace_bytes=int(eng.workspace_gib * (1 << 30)))
            return onnx_path.parent / info["file"], {"gpu": info.get("gpu"), "tensorrt": info.get("tensorrt")}

        return self._stage("engine", key, run)

    def _verify(self, artifact: Path) -> dict[str, Any]:
        from rkd.verify.report import write_reports
        from rkd.verify.verification import request_from_config, verify_artifact

        assert self.profile is not None
        rec = self.recipe
        cfg = rec.verify or self.profile.verify
        if cfg.eps is None:
            cfg = cfg.model_copy(update={"eps": rec.threat.eps})
        source = f"recipe {rec.name}" if rec.verify is not None else f"profile {self.profile.name}"
        out = self.run_dir / "verify"
        key = _key("verify", _dump(cfg), file_sha256(artifact), self._data_arg(), _dump(rec.threat), rec.seed)
        report: dict[str, Any] = {}

        def run(resume: bool) -> tuple[Path, dict[str, Any]]:
            dataset, options = self._data_arg()
            if dataset == "synthetic":
                options = {**options, "n": max(cfg.n, 128)}
            request = request_from_config(
                artifact, cfg, source=source, required_n=cfg.n if cfg.gates else None, dataset=dataset,
                data_options=options, data_root=self.data_root or rec.data.root,
                alpha=rec.threat.alpha, norm=rec.threat.norm,
                seed=rec.seed, device=self.device, state=out / "state",
                profile={"name": self.profile.name, "runtime": self.profile.runtime,
                         "precision": self.profile.precision},
            )
            report.update(verify_artifact(request, log=self.log))
            paths = write_reports(report, out)
            return paths["json"], _verify_metrics(report)

        path = self._stage("verify", key, run, clean=[out])
        if not report:
            report.update(json.loads(path.read_text(encoding="utf-8")))
        return report

    # -- everything --------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every stage the recipe names; the verify report (if any) decides the exit code."""
        with _locked(self.run_dir):
            self._check_stage_folders()
            atomic_write_text(self.run_dir / "recipe.resolved.yaml", dump_recipe(self.recipe))
            teacher = self._teacher()
            student = self._distill(teacher)
            report = None
            if self.profile is not None:
                if student is None:
                    raise RecipeError(f"{self.recipe.name}: a deploy section needs a student section (what to deploy)")
                float_onnx = self._export(student)
                shipped = float_onnx
                if self.profile.precision == "int8":
                    shipped = self._quantize(student, float_onnx, teacher)
                if self.profile.runtime == "tensorrt":
                    shipped = self._engine(shipped)
                report = self._verify(shipped)
            return RunResult(self.run_dir, self.stages, report)


def _verify_metrics(report: dict[str, Any]) -> dict[str, Any]:
    out = {"clean_acc": report.get("clean_acc"), "robust_acc": report.get("robust_acc"),
           "verdict": report.get("verdict"),
           "gates": {g["gate"]: g["passed"] for g in report.get("gates") or []}}
    if "drop" in report:
        out["drop_robust_acc"] = report["drop"].get("robust_acc")
    return out
