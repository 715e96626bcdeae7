#!/usr/bin/env python3
"""Licence and source check of every crate in Cargo.lock (what `cargo deny check licenses
sources` does, without its install and offline).

Every dependency must come from crates.io and carry a licence expression that the allow-list
satisfies (SPDX: `A OR B` needs one, `A AND B` needs both; `WITH` exceptions only widen).
Advisories are not checked here: the RustSec database is a git repository this build does
not fetch (see docs/contributing.md, The loop).

Usage: scripts/check-licenses.py   (exit 1 naming each offending crate)
"""
import json
import re
import subprocess
import sys

# Permissive licences compatible with shipping the operator under Apache-2.0.
ALLOWED = {
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Unicode-3.0",
    "Unlicense",
    "Zlib",
    "BSL-1.0",
    "CDLA-Permissive-2.0",
}
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def satisfied(expression: str) -> bool:
    """Evaluates an SPDX expression (also the old `A/B` form) against ALLOWED."""
    tokens = re.findall(r"\(|\)|[A-Za-z0-9.\-+]+", expression.replace("/", " OR "))
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def primary():
        if peek() == "(":
            take()
            value = disjunction()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {expression!r}")
            return value
        licence = take()
        if peek() == "WITH":
            take()
            take()  # an exception only grants more
        return licence in ALLOWED

    def conjunction():
        value = primary()
        while peek() == "AND":
            take()
            value = primary() and value
        return value

    def disjunction():
        value = conjunction()
        while peek() == "OR":
            take()
            value = conjunction() or value
        return value

    result = disjunction()
    if peek() is not None:
        raise ValueError(f"cannot read licence expression {expression!r}")
    return result


def main() -> int:
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    root = set(metadata["workspace_members"])
    problems = []
    for package in metadata["packages"]:
        if package["id"] in root:
            continue
        name = f"{package['name']} {package['version']}"
        if package["source"] != CRATES_IO:
            problems.append(f"{name}: not from crates.io ({package['source']})")
        licence = package.get("license")
        if not licence:
            problems.append(f"{name}: no licence expression (licence file only)")
        elif not satisfied(licence):
            problems.append(f"{name}: licence {licence!r} is not in the allow-list")
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(metadata["packages"]) - len(root)
    print(f"licences: {count} crates checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
