# project_python: the interpreter the project's scripts run (sourced by the scripts that need one).
# In this order: the checkout's .venv/bin/python (what `make test` and `make demo` create), then $PYTHON,
# then python3, then python. The checkout's .venv comes first so that a fresh shell needs no activated
# environment and a PYTHON variable set for other tools does not pick an interpreter without the
# project's requirements.
project_python() {
    local repo candidate
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    for candidate in "$repo/.venv/bin/python" "${PYTHON:-}" python3 python; do
        [[ -n $candidate ]] || continue
        if [[ $candidate == */* ]]; then
            [[ -x $candidate ]] && { echo "$candidate"; return 0; }
            if [[ $candidate == "${PYTHON:-}" ]]; then
                echo "PYTHON=$PYTHON is not an executable file: point it at an interpreter or unset it" >&2
                return 1
            fi
        elif command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "no Python found: run \`make test\` once in $repo (it creates .venv) or set PYTHON" >&2
    return 1
}
