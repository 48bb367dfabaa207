#!/usr/bin/env bash
# Mutation testing of the training and sampling core (docs/testing.md): mutmut (configured in pyproject.toml,
# [tool.mutmut]) plants one bug at a time in the functions below, runs the fast tests that execute that function,
# and counts the bugs no test catches. Then it prints the score per file and the surviving mutants
# (`.venv/bin/mutmut show NAME` shows one's diff). Hours on 2 CPU cores, so not part of CI.
#
#   bash scripts/mutation.sh                          # the whole core (every mutant, afresh)
#   bash scripts/mutation.sh 'lightning_mf.flow.*'    # some mutants (fnmatch patterns over mutant names)
#   bash scripts/mutation.sh --unkilled               # only the core's mutants no test killed last time (after
#                                                     # adding tests; remove mutants/mutmut-stats.json first so
#                                                     # mutmut maps the new tests to the functions they run)
#   bash scripts/mutation.sh --score                  # the score of the last run, without running anything
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
if [ ! -x .venv/bin/mutmut ]; then
    .venv/bin/python -m pip install --quiet -c requirements/lock.txt -e ".[dev,mutation]"
fi

# The core (issue 14): every function of these modules; of lit/base.py, the EMA, clipping and NaN-guard parts.
CORE=(
    'lightning_mf.flow.*' 'lightning_mf.objectives.*' 'lightning_mf.sampling.*' 'lightning_mf.lit.mutual_forcing.*'
    'lightning_mf.models.transformer.*' 'lightning_mf.models.kv_cache.*' 'lightning_mf.models.masks.*'
)
for method in configure_gradient_clipping clip_or_skip optimizer_step after_optimizer_step ema_decay_now update_ema; do
    CORE+=("lightning_mf.lit.base.xǁFlowModuleǁ${method}__mutmut_*")
done

# Score per file over the core's mutants, from mutmut's result files (mutants/**/*.py.meta); with --unkilled, print
# the names of the core's mutants that were not killed instead.
report() {
    .venv/bin/python - "$@" "${CORE[@]}" <<'PY'
import fnmatch, json, sys
from collections import Counter
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 36: "killed", 24: "killed", -24: "killed", 152: "killed", 255: "killed",  # timeouts
          0: "survived", None: "not checked", 5: "no tests", 33: "no tests"}
unkilled, patterns = sys.argv[1] == "--unkilled", sys.argv[2:]
if unkilled:
    for meta in sorted(Path("mutants").glob("**/*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if STATUS.get(code) != "killed" and any(fnmatch.fnmatch(name, p) for p in patterns):
                print(name)
    sys.exit()
survivors, total = [], Counter()
print(f"{'file':44s} {'killed':>7s} {'survived':>9s} {'other':>6s} {'score':>7s}")
for meta in sorted(Path("mutants").glob("**/*.py.meta")):
    results = {k: v for k, v in json.loads(meta.read_text())["exit_code_by_key"].items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    if not results:
        continue
    counts = Counter({"no tests": "survived"}.get(STATUS.get(code, "other"), STATUS.get(code, "other")) for code in results.values())
    survivors += sorted(k for k, v in results.items() if STATUS.get(v) in ("survived", "no tests"))
    total.update(counts)
    decided = counts["killed"] + counts["survived"]
    score = f"{100 * counts['killed'] / decided:6.1f}%" if decided else "    -"
    other = sum(n for s, n in counts.items() if s not in ("killed", "survived"))
    print(f"{str(meta)[len('mutants/'):-len('.meta')]:44s} {counts['killed']:7d} {counts['survived']:9d} {other:6d} {score:>7s}")
decided = total["killed"] + total["survived"]
print(f"{'all':44s} {total['killed']:7d} {total['survived']:9d} {sum(total.values()) - decided:6d} "
      f"{100 * total['killed'] / max(decided, 1):6.1f}%")
print("(killed includes timeouts; survived includes mutants no test runs; other: not checked yet, suspicious)")
print("surviving mutants:", *survivors, sep="\n  ")
PY
}

if [[ "${1:-}" != "--score" ]]; then
    WORKERS="${MUTATION_WORKERS:-$(getconf _NPROCESSORS_ONLN)}"  # (nproc would follow OMP_NUM_THREADS below)
    # Workers are forked from a process that has run torch: one thread each, or its thread pools can deadlock them.
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    if [[ "${1:-}" == "--unkilled" ]]; then
        mapfile -t PATTERNS < <(report --unkilled)
        ((${#PATTERNS[@]})) || { echo "every mutant of the core was killed"; exit 0; }
    elif (($#)); then PATTERNS=("$@"); else PATTERNS=("${CORE[@]}"); fi
    .venv/bin/mutmut run --max-children "$WORKERS" "${PATTERNS[@]}"
fi
report --score
