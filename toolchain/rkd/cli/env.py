"""Show versions of rkd and its libraries, the devices, and which runtimes can run on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rkd.cli._common import handle_errors, out


def env(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """Show versions of rkd and its libraries, the devices, and which runtimes can run on this machine."""
    with handle_errors():
        from rkd.environment import CPU_EXTENSIONS, device_description, package_versions, runtime_availability

        versions, runtimes = package_versions(), runtime_availability()
        if json_out:
            out.print_json(json.dumps({"versions": versions, "runtimes": runtimes,
                                       "host": device_description("cpu")}))
            return
        table = Table(title="packages")
        table.add_column("package")
        table.add_column("version")
        for name, ver in versions.items():
            table.add_row(name, ver or "[dim]not installed[/]")
        out.print(table)
        rt = Table(title="runtimes")
        for col in ("runtime", "runs here", "details"):
            rt.add_column(col)
        for name, info in runtimes.items():
            detail = info.get("why") or ", ".join(info.get("providers", info.get("devices", [])))
            rt.add_row(name, "yes" if info["available"] else "[red]no[/]", escape(detail))
        out.print(rt)
        host = device_description("cpu")
        extensions = ", ".join(host["cpu_extensions"]) or "none of " + ", ".join(CPU_EXTENSIONS)
        out.print(f"cpu: {escape(str(host['cpu']))}, {host['cpu_cores']} cores, torch kernels "
                  f"{host['cpu_capability']}, extensions: {extensions}")
