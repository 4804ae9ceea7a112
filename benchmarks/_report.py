"""The markdown summary of a harness report."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def _machine(report: dict[str, Any]) -> list[str]:
    machine = report["machine"]
    accelerator = machine.get("accelerator") or {}
    gpu = accelerator.get("gpu")
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    threads = {k: v for k, v in machine["threads"].items() if v}
    lines = [
        f"- machine: `{machine['host']}`, {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Python {machine['python']}",
        f"- threads: torch {accelerator.get('torch_threads')} (inter-op "
        f"{accelerator.get('torch_interop_threads')}); "
        + (", ".join(f"{k}={v}" for k, v in threads.items()) or "no thread variables set"),
        "- GPU: "
        + (
            f"{gpu['name']} ({gpu['memory_gib']} GiB), driver {gpu['driver']}, CUDA "
            f"{accelerator.get('torch_cuda')}, cuDNN {gpu['cudnn']}"
            if gpu
            else "none"
        ),
        f"- ONNX Runtime providers: {', '.join(accelerator.get('onnxruntime_providers', []))}",
        f"- packages: {packages}",
        f"- commit `{machine['commit']}`, {report['started']} to {report['finished']} (UTC)",
    ]
    return lines


def render(report: dict[str, Any]) -> str:
    """Every suite's tables, the machine, the plots and any failure, as markdown."""
    from benchmarks import federation, ingest, load, serving, triage, viewer, worklist
    from benchmarks import inference as inference_suite

    results = report["results"]
    out = [
        f"# radcloud bench: {', '.join(report['suites'])} on {report['device']}",
        "",
        f"`{report['command']}`"
        + (
            " — **--quick: slim models and tiny windows; not figures to quote**"
            if report["quick"]
            else ""
        ),
        "",
        *_machine(report),
        "",
    ]
    sections = (
        ("inference", "Inference (random weights; speed only)", inference_suite.markdown),
        ("serving", "Serving efficiency", serving.markdown),
        ("ingest", "Ingest", ingest.markdown),
        ("e2e", "Time to triage (SYNTHETIC studies)", triage.markdown),
        ("worklist", "Worklist waits in minutes (SIMULATED, SYNTHETIC streams)", worklist.table),
        ("viewer", "Viewer: first image in the browser (SYNTHETIC CT, loopback)", viewer.markdown),
        ("federation", "Federation: search and retrieval across hospitals", federation.markdown),
        (
            "load",
            "Load: studies pushed while radiologists read (SYNTHETIC, loopback)",
            load.markdown,
        ),
    )
    for key, title, render_suite in sections:
        if key in results:
            seconds = report["duration_s"].get(key)
            out += [f"## {title}", "", f"({seconds} s)", "", render_suite(results[key]), ""]
    for key, reason in report.get("skipped", {}).items():
        out += [f"## {key}: skipped", "", reason, ""]
    for key, message in report["errors"].items():
        out += [f"## {key}: FAILED", "", f"`{message}`", ""]
    plots = report["files"].get("plots", {})
    if plots:
        out += ["## Plots", ""]
        out += [f"- {name}: `{file}`" for name, file in plots.items()]
        out.append("")
    return "\n".join(out)
