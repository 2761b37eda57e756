#!/usr/bin/env bash
# A newcomer's first hour, scripted: a fresh virtual environment, the quick start, a quick
# real-MNIST explanation, the README's Python blocks, and five common mistakes with the exact
# messages they get. Prints the wall time of each step; exits non-zero if a step fails or a
# mistake is not answered by a one-line error with exit status 2.
#
#   experiments/newcomer.sh ../shared/data        # MNIST's IDX files under DATA/mnist
#
# Everything is written under a fresh temporary folder; the checkout is only read.
set -euo pipefail
data=$(realpath "${1:?usage: experiments/newcomer.sh DATA_DIR (with mnist/ inside)}")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work"
echo "working in $work"

step() {  # step NAME COMMAND...: runs it, prints its wall time
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  echo "== $name: $((SECONDS - start)) s"
}

python3 -m venv venv
. venv/bin/activate
python -m pip install --quiet --upgrade pip
step "install (pip install .)" pip install --quiet "$repo"
step "cfajax explain --help" bash -c "cfajax explain --help > /dev/null"
step "quick start (cfajax explain)" cfajax explain --no-progress
step "real MNIST, --quick" cfajax explain --dataset mnist --data-dir "$data" --quick \
    --no-progress
step "install the test extras" pip install --quiet "$repo[test]"
step "the README's Python blocks" python -m pytest -q "$repo/tests/readme_test.py" -p no:cacheprovider

mistake() {  # mistake WHAT ARGS...: must fail with status 2 and one line on stderr
  local what=$1 status=0
  shift
  cfajax "$@" > /dev/null 2> err.txt || status=$?
  echo "-- $what: cfajax $* -> exit $status: $(cat err.txt)"
  if [ "$status" != 2 ] || [ "$(wc -l < err.txt)" != 1 ]; then
    echo "expected exit status 2 and one line of error" >&2
    exit 1
  fi
}
echo "== five common mistakes"
mistake "one class instead of a pair" explain --classes 4 --out runs/m1
mistake "a data folder that does not exist" explain --dataset mnist --data-dir nowhere --out runs/m2
mistake "a threshold outside (0, 1)" explain --threshold 1.5 --out runs/m3
mistake "a checkpoint that does not exist" explain --classifier runs/nothing --out runs/m4
mistake "a resume with other options" explain --out runs/explain-digits --max-steps 7
echo "newcomer session passed"
