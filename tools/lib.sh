# lib.sh: what Ferry's tools share. Source it: `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.
#
#   die MESSAGE…            print "<tool>: error: MESSAGE" on stderr and exit 1
#   build_ferry ARGS…       swift build ARGS; on failure print the build's last lines and die
#                           (never go on with the previous binary)
#   bin_path ARGS…          the folder of the binaries that `swift build ARGS` makes
#   median N…               the median of numbers (the mean of the middle two for an even count)

export PATH="$PATH:/opt/swift/usr/bin:/usr/sbin:/sbin"
ferry_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ferry_tool="$(basename "$0")"

die() {
    echo "$ferry_tool: error: $*" >&2
    exit 1
}

build_ferry() {
    local log
    log=$(mktemp /tmp/ferry-build.XXXXXX)
    if ! (cd "$ferry_root" && swift build "$@") >"$log" 2>&1; then
        grep -v "the use of \`mktemp' is dangerous" "$log" | tail -n 30 >&2
        rm -f "$log"
        die "'swift build $*' failed (its last lines are above)"
    fi
    rm -f "$log"
}

bin_path() {
    (cd "$ferry_root" && swift build "$@" --show-bin-path)
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
