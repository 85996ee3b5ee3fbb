#!/bin/bash
# Times the eustock fit (1830 × 6 z-scored DAX features, K = 10, defaults)
# in scikit-learn and in Go, back to back, ROUNDS times, and prints the
# medians and their ratio. Needs Debian's python3-sklearn. Run from
# anywhere:
#
#   pkg/dpgmm/testdata/bench_vs_sklearn.sh [ROUNDS]   # default 5
#
# OPENBLAS_NUM_THREADS=1 before the command makes numpy single-threaded,
# to compare with the workers=1 line.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
bin=$(mktemp -d)/dpgmm.test
trap 'rm -rf "$(dirname "$bin")"' EXIT
go test -c -o "$bin" .
sk=() w1=() w2=()
for r in $(seq "$rounds"); do
	sk+=("$(cd testdata && /usr/bin/python3 golden.py --bench 7 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["median_s"])')")
	out=$("$bin" -test.run '^$' -test.bench 'FitEustock' -test.benchtime 10x)
	w1+=("$(awk '/workers=1/ {print $3/1e9}' <<<"$out")")
	w2+=("$(awk '/workers=2/ {print $3/1e9}' <<<"$out")")
	echo "round $r (load $(cut -d' ' -f1 /proc/loadavg)): scikit-learn ${sk[-1]} s, Go workers=1 ${w1[-1]} s, workers=2 ${w2[-1]} s"
done
/usr/bin/python3 - "${sk[*]}" "${w1[*]}" "${w2[*]}" <<'PY'
import statistics, sys
sk, w1, w2 = ([float(v) for v in a.split()] for a in sys.argv[1:4])
m = statistics.median
print(f"median of {len(sk)} rounds: scikit-learn {m(sk):.3f} s; Go workers=1 {m(w1):.3f} s (ratio {m(w1)/m(sk):.2f}); workers=2 {m(w2):.3f} s (ratio {m(w2)/m(sk):.2f})")
PY
