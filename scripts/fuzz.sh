#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target of the module (every Fuzz function that
# `go test -list` finds) for FUZZTIME each, beyond the seeds the unit tests
# already run. A crasher fails the run; Go writes it under the package's
# testdata/fuzz/<FuzzName>/, where it becomes a regression seed once the bug
# is fixed (docs/fuzzing.md).
#
#   scripts/fuzz.sh                  # every target, 20 s each
#   FUZZTIME=2m scripts/fuzz.sh      # longer
#   scripts/fuzz.sh 'Upload|Kernel'  # only the targets whose name matches
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
FUZZTIME=${FUZZTIME:-20s}
only=${1:-.}

# `go test -list` prints a package's matching names, then "ok <package>".
listing=$(go test -list '^Fuzz' ./...)
targets=()
names=()
while read -r first second _; do
	case $first in
	Fuzz*) names+=("$first") ;;
	ok)
		for n in ${names[@]+"${names[@]}"}; do targets+=("$second $n"); done
		names=()
		;;
	esac
done <<<"$listing"

failed=()
ran=0
for t in ${targets[@]+"${targets[@]}"}; do
	read -r pkg name <<<"$t"
	if ! grep -Eq -- "$only" <<<"$name"; then continue; fi
	ran=$((ran + 1))
	printf '%s %s (%s)\n' "--" "$name" "$pkg"
	# Go's fuzzer may end a run with "context deadline exceeded" and no
	# crasher when its time ends while a worker is busy: that run is retried
	# once; a crash always fails.
	for try in 1 2; do
		if out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1); then
			printf '%s\n' "$out" | tail -3
			break
		fi
		printf '%s\n' "$out" | tail -20
		if [[ $try == 1 ]] && grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
			echo "fuzz.sh: $name: the fuzzer's deadline ended a busy worker (no crasher); again"
			continue
		fi
		failed+=("$name ($pkg)")
		break
	done
done
if ((ran == 0)); then
	echo "fuzz.sh: no fuzz target matches '$only'" >&2
	exit 1
fi
if ((${#failed[@]} > 0)); then
	echo "fuzz.sh: ${#failed[@]} of $ran targets failed; the crashers are under their package's testdata/fuzz/:" >&2
	printf '  %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "fuzz.sh: $ran targets ran for $FUZZTIME each, no crash"
