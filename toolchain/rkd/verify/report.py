"""Verification reports: JSON (RobustBench names), JUnit XML (one test case per gate), Markdown, PNG curve.

JUnit: one ``<testsuite name="rkd-verify">`` with a ``<testcase>`` per gate (``<failure>`` when it fails) and,
with ``fail_on_warnings``, one for the warnings: what GitHub Actions, GitLab and Jenkins read. The Markdown
summary is what ``$GITHUB_STEP_SUMMARY`` shows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from rkd.atomic import atomic_write, atomic_write_text

JSON_NAME = "verify.json"
MARKDOWN_NAME = "verify.md"
JUNIT_NAME = "verify.junit.xml"
CURVE_NAME = "verify.curve.png"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci95"]
    return f"{100 * lo:.1f}-{100 * hi:.1f}"


def preprocessing_text(record: Mapping[str, Any] | None) -> str | None:
    """One line for the report's ``preprocessing`` record (what stood in front of the model), e.g.
    ``BGR, x*255, mean (103.5, 116.3, 123.7), std (57.38, 57.12, 58.4), NHWC``; None when none was stated."""
    if not record:
        return None
    mean, std = list(record.get("mean") or [0.0] * 3), list(record.get("std") or [1.0] * 3)
    scale = float(record.get("scale", 1.0))
    parts = [str(record.get("channels", "rgb")).upper()] + ([f"x*{scale:g}"] if scale != 1.0 else [])
    if any(v != 0.0 for v in mean) or any(v != 1.0 for v in std):
        parts += [f"mean ({', '.join(f'{v:.4g}' for v in mean)})", f"std ({', '.join(f'{v:.4g}' for v in std)})"]
    return ", ".join(parts + [str(record.get("layout", "nchw")).upper()])


def white_box_text(record: Mapping[str, Any] | None) -> str | None:
    """One line for the report's ``white_box`` record: which gradient attacks ran through what, or why none
    did; None without a record."""
    if not record:
        return None
    if record.get("ran"):
        text = f"ran ({', '.join(record.get('attacks') or [])}) with gradients from {record.get('gradients_from')}"
        rules = record.get("gradient_rules")
        return text + (f"; gradient rules: {rules}" if rules else "")
    return f"none ran: {record.get('why_not')}"


#: ``rkd verify``'s exit code per verdict (``no gates`` measures only: 0).
VERDICT_EXIT_CODES = {"pass": 0, "no gates": 0, "fail": 1, "unreliable": 5}


def verdict_exit_code(report: Mapping[str, Any]) -> int:
    """The exit code of a verify report: 0 pass (or no gates), 1 a gate failed, 5 the evaluation was unreliable
    and nothing gradient-free could stand in for it."""
    return VERDICT_EXIT_CODES.get(str(report.get("verdict")), 0 if report.get("passed") else 1)


def junit_xml(report: Mapping[str, Any]) -> str:
    """JUnit XML with one test case per gate (and one for warnings when they fail the run); the suite's
    properties record the artifact, threat model, accuracies, stated preprocessing and white-box record."""
    cases: list[tuple[str, str | None, str]] = []
    for gate in report.get("gates") or []:
        cases.append((f"gate {gate['gate']}", None if gate["passed"] else gate["message"], gate["message"]))
    warnings = report.get("warnings") or []
    if report.get("fail_on_warnings"):
        text = "; ".join(warnings)
        cases.append(("no verification warnings", text or None, text or "none"))
    unreliable = (report.get("reliability") or {}).get("unreliable") or []
    if report.get("gates") and unreliable:
        text = "; ".join(unreliable) + ": " + str((report.get("reliability") or {}).get("note"))
        cases.append(("reliable evaluation", text, text))
    failures = sum(1 for _, fail, _ in cases if fail)
    suite = ET.Element("testsuite", name="rkd-verify", tests=str(len(cases)), failures=str(failures), errors="0",
                       time=f"{(report.get('timing') or {}).get('total_s', 0):.3f}")
    props = ET.SubElement(suite, "properties")
    artifact = report.get("artifact") or {}
    for key, value in (("artifact", artifact.get("file")), ("sha256", artifact.get("sha256")),
                       ("eps", report.get("eps")), ("eps_text", report.get("eps_text")), ("n", report.get("n")),
                       ("seed", report.get("seed")),
                       ("clean_acc", report.get("clean_acc")), ("robust_acc", report.get("robust_acc"))):
        ET.SubElement(props, "property", name=key, value=str(value))
    note = (report.get("floor") or {}).get("note")
    if note:
        ET.SubElement(props, "property", name="floor", value=note)
    for key, text in (("preprocessing", preprocessing_text(report.get("preprocessing"))),
                      ("white_box", white_box_text(report.get("white_box")))):
        if text:
            ET.SubElement(props, "property", name=key, value=text)
    classname = f"rkd.verify.{Path(str(artifact.get('file', 'artifact'))).name}"
    for name, failure, message in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name)
        if failure:
            ET.SubElement(case, "failure", message=failure, type="GateFailed").text = failure
        else:
            ET.SubElement(case, "system-out").text = message
    if warnings:
        ET.SubElement(suite, "system-err").text = "\n".join(warnings)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def markdown(report: Mapping[str, Any]) -> str:
    """A Markdown summary: verdict, stated preprocessing, white-box attacks (or why none ran), gates, per-attack
    table (engine vs float), agreement, warnings."""
    artifact = report.get("artifact") or {}
    verdict = {"no gates": "measured, no gates", "unreliable": "UNRELIABLE"}.get(
        report.get("verdict", ""), "PASS" if report.get("passed") else "FAIL")
    lines = [
        f"## rkd verify: {verdict}",
        "",
        f"`{artifact.get('file')}` ({artifact.get('kind')}, {artifact.get('runtime')}), "
        f"{(report.get('data') or {}).get('dataset')} {(report.get('data') or {}).get('split')}, n={report.get('n')}, "
        f"{report.get('norm')} eps={report.get('eps_text')}, seed={report.get('seed')}, "
        f"samples sha256 `{str((report.get('data') or {}).get('indices_sha256', ''))[:16]}`",
        "",
    ]
    pre, white = preprocessing_text(report.get("preprocessing")), white_box_text(report.get("white_box"))
    if pre:
        lines += [f"Preprocessing in front of the model: {pre}.", ""]
    if white:
        lines += [f"White-box attacks: {white}.", ""]
    gates = report.get("gates") or []
    if gates:
        lines += ["| gate | value | result |", "|---|---|---|"]
        for g in gates:
            value = "not measured" if g["value"] is None else f"{g['value']:.4g}"
            lines.append(f"| `{g['gate']}` | {value} | {'pass' if g['passed'] else '**FAIL**'} |")
        lines.append("")
    for note in ((report.get("floor") or {}).get("note"), (report.get("reliability") or {}).get("note")):
        if note:
            lines += [f"**Note:** {note}.", ""]
    reasons = (report.get("reliability") or {}).get("unreliable") or []
    if reasons:
        lines += [*(f"- unreliable: {r}" for r in reasons), ""]
    float_attacks = (report.get("float") or {}).get("attacks") or {}
    lines += ["| attack | engine | 95% CI | float | drop |", "|---|---|---|---|---|"]
    for name, entry in (report.get("attacks") or {}).items():
        ref = float_attacks.get(name)
        drop = None if ref is None else ref["acc"] - entry["acc"]
        lines.append(f"| {name} | {_pct(entry['acc'])} | {_ci(entry)} | {_pct(ref['acc'] if ref else None)} | "
                     f"{'-' if drop is None else f'{100 * drop:+.1f}'} |")
    wc, fwc = report.get("worst_case"), (report.get("float") or {}).get("worst_case")
    drop = None if not fwc else fwc["acc"] - wc["acc"]
    lines.append(f"| **worst case** | **{_pct(wc['acc'])}** | {_ci(wc)} | {_pct(fwc['acc'] if fwc else None)} | "
                 f"{'-' if drop is None else f'{100 * drop:+.1f}'} |")
    agreement = report.get("agreement") or {}
    parts = [f"{k} {_pct(v['top1_agreement'])} (n={v['n']})" for k, v in agreement.items() if v]
    lines += ["", f"Engine/surrogate top-1 agreement: {', '.join(parts) or '-'}."]
    lines += _class_lines(report.get("by_class"))
    lines += _curve_lines(report.get("curve"))
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warnings]
    timing = report.get("timing") or {}
    lines += ["", f"Total {timing.get('total_s', 0):.1f} s; engine images {timing.get('engine_images', 0)}; "
                  f"rkd {(report.get('versions') or {}).get('rkd')}."]
    return "\n".join(lines) + "\n"


def class_rows(by_class: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A ``by_class`` section (:meth:`rkd.verify.suite.RobustnessResult.by_class`) as a header and text rows:
    per class its support, clean prediction count and accuracy under each attack and in the worst case (the
    most predicted class marked), then a row without that class. Shared by ``verify.md`` and the CLI tables."""
    attacks = list(by_class["acc"])
    top = by_class["most_predicted"]
    header = ["class", "n", "predicted", *(a.replace("_", " ") for a in attacks)]
    rows = [[f"{c} {name}" + (" (most predicted)" if c == top else ""), str(by_class["support"][c]),
             str(by_class["predicted"][c]), *(_pct(by_class["acc"][a][c]) for a in attacks)]
            for c, name in enumerate(by_class["classes"])]
    rest = by_class["without_most_predicted"]
    rows.append([f"all but {top}", str(sum(by_class["support"]) - by_class["support"][top]), "",
                 *(_pct(rest[a]) for a in attacks)])
    return header, rows


def _class_lines(by_class: Mapping[str, Any] | None) -> list[str]:
    """The engine's accuracy per true class, folded (``<details>``) so the summary stays short."""
    if not by_class:
        return []
    header, rows = class_rows(by_class)
    return ["", "<details><summary>Engine accuracy per class</summary>", "", "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), "", "</details>"]


def plot_curve(curve: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """PNG of accuracy against eps for the engine and the float reference, each with its 95% Wilson band shaded;
    L-inf eps on the axis as k/255."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    linf = curve.get("norm", "linf") == "linf"
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    xs = [e * 255 if linf else e for e in curve["eps"]]
    for label, style, color in (("float", "o--", "tab:blue"), ("engine", "s-", "tab:orange")):
        if label not in curve:
            continue
        ax.plot(xs, [100 * v for v in curve[label]], style, color=color, label=label)
        band = curve.get(f"{label}_ci95")
        if band:
            ax.fill_between(xs, [100 * lo for lo, _ in band], [100 * hi for _, hi in band], color=color, alpha=0.2,
                            linewidth=0, label=f"{label} 95% CI")
    if linf:
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: "0" if v == 0 else f"{v:.3g}/255"))
    ax.set_xlabel("eps (L-inf)" if linf else "eps (L2)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    measure = f"worst case of {', '.join(curve.get('attacks') or [str(curve.get('attack'))])}"
    ax.set_title(f"{title}\n{measure}" if title else measure, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def _curve_lines(curve: Mapping[str, Any] | None) -> list[str]:
    """The curve as a table (eps as k/255, engine and float with their 95% intervals) and the PNG beside the
    Markdown file (a relative link)."""
    if not curve:
        return []
    texts = curve.get("eps_text") or [f"{e:g}" for e in curve["eps"]]
    lines = ["", f"Accuracy against eps: {curve.get('measure') or curve.get('attack')}.", "",
             "| eps | engine | 95% CI | float | 95% CI |", "|---|---|---|---|---|"]
    for i, text in enumerate(texts):
        cells = []
        for label in ("engine", "float"):
            values, band = curve.get(label), curve.get(f"{label}_ci95")
            cells.append(_pct(values[i]) if values else "-")
            cells.append(f"{100 * band[i][0]:.1f}-{100 * band[i][1]:.1f}" if band else "-")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    if curve.get("png"):
        lines += ["", f"![accuracy against eps]({Path(str(curve['png'])).name})"]
    return lines


def report_names(*, curve: bool = False, junit: bool = True) -> list[str]:
    """The files :func:`write_reports` writes into its folder (the JUnit file unless it goes elsewhere)."""
    return [JSON_NAME, MARKDOWN_NAME] + ([JUNIT_NAME] if junit else []) + ([CURVE_NAME] if curve else [])


def write_reports(
    report: dict[str, Any], out_dir: str | Path, *, junit: str | Path | None = None
) -> dict[str, Path]:
    """Write verify.json, verify.md, the JUnit file (``out_dir/verify.junit.xml`` unless ``junit`` names one)
    and, when the report has a curve, verify.curve.png; append the Markdown to ``$GITHUB_STEP_SUMMARY``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME,
             "junit": Path(junit) if junit else out / JUNIT_NAME}
    if report.get("curve"):
        paths["curve"] = plot_curve(report["curve"], out / CURVE_NAME,
                                    title=Path(str((report.get("artifact") or {}).get("file", ""))).name)
        report["curve"]["png"] = str(paths["curve"])
    md = markdown(report)
    atomic_write_text(paths["markdown"], md)
    paths["junit"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["junit"], junit_xml(report))
    atomic_write_text(paths["json"], json.dumps(report, indent=1) + "\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    return paths
