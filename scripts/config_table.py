"""Prints the README's configuration table from the `serve` command's own flags,
so the table cannot drift from the code (a test compares them)."""

from __future__ import annotations

import argparse
import re

from comfyui_grpc.cli import build_parser

ENV = re.compile(r"\s*\[(COMFYUI_GRPC_\w+)(?:, ([^\]]+))?\]\s*$")


def table() -> str:
    parser = build_parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    rows = ["| Flag | Environment variable | Meaning |", "| --- | --- | --- |"]
    for action in serve._actions:
        if not action.option_strings or action.dest == "help":
            continue
        help_text = action.help or ""
        env, default = "", ""
        if match := ENV.search(help_text):
            env, default = match.group(1), match.group(2) or ""
            help_text = help_text[: match.start()]
        if default:
            help_text = f"{help_text} (default {default})"
        flags = " / ".join(f"`{flag}`" for flag in action.option_strings)
        rows.append(f"| {flags} | {f'`{env}`' if env else ''} | {help_text.strip()} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
