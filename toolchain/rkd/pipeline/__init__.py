"""``rkd run``: every stage a recipe names, in one run directory, each skipped when its inputs are unchanged.

Stages, in order (a stage runs only when the recipe has its section):

==========  =================================================  ====================================
stage       does                                               writes (under ``runs/<name>/``)
==========  =================================================  ====================================
teacher     trains ``teacher`` (or checks ``teacher.checkpoint``) ``teacher/model.safetensors``
distill     distils ``student`` from the teacher                ``student/model.safetensors``
export      float ONNX + manifest (``rkd export``)              ``bundle/model.onnx``
quantize    INT8 QDQ + surrogate (``rkd quantize``, opt. QAT)   ``bundle/model.int8.onnx``
engine      TensorRT engine (tensorrt profiles only)            ``bundle/model.<gpu>.<prec>.engine``
verify      ``rkd verify`` with the profile's or recipe's gates ``verify/verify.{json,md,junit.xml}``
==========  =================================================  ====================================

Skipping: each stage's key is a hash of the recipe sections it reads and the sha256 of the artifacts it
consumes; ``run.json`` records, per stage, the key, the artifact and its sha256. A stage whose key and artifact
are unchanged is skipped; a changed key reruns it and everything downstream (their keys change with its
artifact). Resuming: a training stage interrupted with the same key continues from its last checkpoint
(``fit(resume=True)``); verification continues from its state folder. One ``rkd run`` per run directory at a
time (a lock).

Nothing outside rkd's own files is ever removed: the run directory must be new, empty, or one ``rkd run`` made
(its ``.rkd-run`` marker, or an older ``run.json``), and every stage folder is checked before anything runs
for files rkd did not write (those ``run.json`` lists for the stage, else the names the stage writes). A stage
that reruns keeps its last complete output in ``<stage>.previous`` until the new one is complete; the output of
a run cut short never replaces it, and a rerun whose inputs are those of the kept output restores it.

Modules: :mod:`~rkd.pipeline.record` (the run directory and ``run.json``), :mod:`~rkd.pipeline.runner` (the
stages) and :mod:`~rkd.pipeline.render` (the table ``rkd run`` prints).
"""

from __future__ import annotations

from rkd.pipeline.record import (
    PREVIOUS,
    RUN_FORMAT,
    RUN_LOCK,
    RUN_MARKER,
    RUN_RECORD,
    STAGE_FOLDERS,
    STAGES,
    RunResult,
    StageResult,
)
from rkd.pipeline.runner import Pipeline

__all__ = ["PREVIOUS", "RUN_FORMAT", "RUN_LOCK", "RUN_MARKER", "RUN_RECORD", "STAGES", "STAGE_FOLDERS", "Pipeline",
           "RunResult", "StageResult"]
