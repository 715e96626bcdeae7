#!/usr/bin/env bash
# ShellCheck over every tracked shell script (tools/, its subfolders, scripts/, .ci/run): tools/
# builds the control plane, a real kubelet node and its images, and nothing else would catch an
# unquoted expansion or a lost exit status in them before a real run does. shellcheck is
# Debian's, installed once when missing (scripts/deps.sh); its default severity (style
# included) applies.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v shellcheck >/dev/null || scripts/deps.sh shellcheck
# A shell script: a name ending in .sh, or a first line that is a sh or bash shebang.
scripts=()
while IFS= read -r -d '' f; do
    [ -f "$f" ] || continue # tracked but deleted in the work tree
    first=
    case $f in
        *.sh) ;;
        *) IFS= read -r first <"$f" 2>/dev/null || true
           [[ $first =~ ^#!.*[/\ ](ba)?sh([[:space:]]|$) ]] || continue ;;
    esac
    scripts+=("$f")
done < <(git ls-files -z)
shellcheck -- "${scripts[@]}"
