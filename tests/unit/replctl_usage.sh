#!/bin/sh
# replctl_usage.sh — replctl refuses bad command lines itself (exit 2, a
# message on stderr, nothing sent), answers --help and --version, and
# exits 3 when replicad cannot be reached.
# Usage: sh tests/unit/replctl_usage.sh PATH/TO/replctl
set -u

REPLCTL=${1:?usage: replctl_usage.sh PATH/TO/replctl}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/replctl_usage.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT INT TERM
# No daemon listens here: a command line that got past the checks would
# exit 3, not 2.
SOCK="$TMP/none.sock"
pass=0
fail=0

# expect CODE PATTERN ARGS...: exit code CODE and PATTERN on stderr.
expect() {
	want=$1 pattern=$2
	shift 2
	"$REPLCTL" "$@" >"$TMP/out" 2>"$TMP/err"
	got=$?
	if [ "$got" -ne "$want" ]; then
		echo "FAIL: replctl $*: exit $got, want $want" >&2
		sed 's/^/  stderr: /' "$TMP/err" >&2
		fail=$((fail + 1))
	elif ! grep -q -e "$pattern" "$TMP/err"; then
		echo "FAIL: replctl $*: stderr lacks '$pattern'" >&2
		sed 's/^/  stderr: /' "$TMP/err" >&2
		fail=$((fail + 1))
	else
		pass=$((pass + 1))
	fi
}

# expect_usage ARGS...: exit 2, "replctl: ..." and a usage line on stderr.
expect_usage() {
	expect 2 '^replctl: ' "$@"
	if ! grep -q '^usage: replctl ' "$TMP/err"; then
		echo "FAIL: replctl $*: no usage line on stderr" >&2
		fail=$((fail + 1))
	fi
}

expect_usage -s "$SOCK"
expect_usage -s "$SOCK" frobnicate web01
expect_usage -s "$SOCK" sync
expect_usage -s "$SOCK" points
expect_usage -s "$SOCK" sync a/b
expect_usage -s "$SOCK" status ../web01
expect_usage -s "$SOCK" sync web01 db02
expect_usage -s "$SOCK" status --wait
expect_usage -s "$SOCK" verify web01 --point x
expect_usage -s "$SOCK" verify web01 --point 0
expect_usage -s "$SOCK" verify web01 --point -3
expect_usage -s "$SOCK" verify web01 --point 3x
expect_usage -s "$SOCK" verify web01 --point 18446744073709551616
expect_usage -s "$SOCK" verify web01 --point
expect_usage -s "$SOCK" verify web01 --point 1 --point 2
expect_usage -s "$SOCK" failover web01 --cleanup
expect_usage -s "$SOCK" failover web01 --test --cleanup --point 3
expect_usage -s "$SOCK" failover web01 --planned --point 3
expect_usage -s "$SOCK" failover web01 --planned --test
expect_usage -s "$SOCK" failover web01 --commit --planned
expect_usage -s "$SOCK" failover web01 --commit --point 2
expect_usage -s "$SOCK" failover web01 --start
expect_usage -s "$SOCK" failover web01 --planned --start
expect_usage -s "$SOCK" failover web01 --test --cleanup --start
expect_usage -s "$SOCK" failover web01 --test --start=yes
expect_usage discover web01
expect_usage discover --uri
expect_usage discover --uri ''
expect_usage discover --uri 'a b'
expect_usage discover --json
expect_usage -s "$SOCK" forget web01
expect_usage -s "$SOCK" reverse web01
expect_usage -s "$SOCK" reverse web01 --to nohost
expect_usage -s "$SOCK" reverse web01 --to host:0
expect_usage -s "$SOCK" reverse web01 --to host:99999
expect_usage -s "$SOCK" reverse web01 --to ::1:873
expect_usage -s "$SOCK" reassign web01
expect_usage -s "$SOCK" reassign --host kvm2
expect_usage -s "$SOCK" reassign web01 --host 'kvm2/x'
expect_usage -s "$SOCK" reassign web01 --host ''
expect_usage -s "$SOCK" reassign web01 --host kvm2 --wait
expect_usage -s "$SOCK" reverse web01 --to host:1 --name
expect_usage -s "$SOCK" reverse web01 --to host:1 --name 'a b'
expect_usage -s "$SOCK" reverse web01 --to host:1 --name ''
expect_usage -s "$SOCK" sync web01 --name host
expect_usage -s "$SOCK" sync web01 --json
expect_usage -s "$SOCK" sync web01 --wait=yes
expect_usage -s "$SOCK" definition
expect_usage -s "$SOCK" definition web01 --json
expect_usage -s "$SOCK" definition web01 --point 0
expect_usage -x status
expect 2 'invalid VM name' -s "$SOCK" sync a/b
expect 2 'invalid point ID' -s "$SOCK" verify web01 --point x
expect 2 'cleanup' -s "$SOCK" failover web01 --cleanup
expect 2 'missing --point' -s "$SOCK" forget web01
expect 2 'missing --to' -s "$SOCK" reverse web01
expect 2 'invalid address' -s "$SOCK" reverse web01 --to bad
expect 2 'missing --host' -s "$SOCK" reassign web01
expect 2 'unknown command' -s "$SOCK" frobnicate
expect 2 '--start needs --test' -s "$SOCK" failover web01 --start
expect 2 'invalid libvirt URI' discover --uri 'a b'

# Well-formed command lines get as far as the (missing) daemon.
expect 3 'cannot reach' -s /nonexistent/sock status
expect 3 'cannot reach' -s "$SOCK" status web01 --json
expect 3 'cannot reach' -s "$SOCK" status --json web01
expect 3 'cannot reach' -s "$SOCK" reassign web01 --host kvm2.example.com
expect 3 'cannot reach' -s "$SOCK" failover --test web01 --point=0042
expect 3 'cannot reach' -s "$SOCK" failover web01 --test --cleanup
expect 3 'cannot reach' -s "$SOCK" failover web01 --planned
expect 3 'cannot reach' -s "$SOCK" reverse web01 --to '[::1]:873'
expect 3 'cannot reach' -s "$SOCK" reverse web01 --to h.example:7000 --name h.example --wait
expect 3 'cannot reach' -s "$SOCK" resync web01 --wait
expect 3 'cannot reach' -s "$SOCK" failover web01 --commit
expect 3 'cannot reach' -s "$SOCK" forget web01 --point 18446744073709551615
expect 3 'cannot reach' -s "$SOCK" prune --dry-run
expect 3 'cannot reach' -s "$SOCK" definition web01
expect 3 'cannot reach' -s "$SOCK" definition web01 --point 7
expect 3 'cannot reach' -s "$SOCK" failover web01 --test --start
expect 3 'cannot reach' -s "$SOCK" failover web01 --start --test --point 4

# discover talks to libvirt, not replicad: libvirt's test driver here.
cat >"$TMP/node.xml" <<'EOF'
<node>
  <domain type='test'>
    <name>web01</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/images/web01.qcow2'/><target dev='vda'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/>
        <source dev='/dev/vg0/web01-data'/><target dev='vdb'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/d.iso'/>
        <target dev='hdc' bus='ide'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='rbd' name='p/x'><host name='mon1'/></source>
        <target dev='vdc'/></disk>
    </devices>
  </domain>
  <domain type='test'>
    <name>cd-only</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
    </devices>
  </domain>
</node>
EOF
# expect_out PATTERN: a whole line of discover's output.
expect_out() {
	if grep -q -x -e "$1" "$TMP/out"; then
		pass=$((pass + 1))
	else
		echo "FAIL: replctl discover: no line '$1'" >&2
		sed 's/^/  stdout: /' "$TMP/out" >&2
		fail=$((fail + 1))
	fi
}
if "$REPLCTL" discover --uri "test://$TMP/node.xml" >"$TMP/out" 2>"$TMP/err" &&
    [ ! -s "$TMP/err" ]; then
	pass=$((pass + 1))
	expect_out '\[vm web01\]'
	expect_out 'domain *= web01'
	expect_out 'tracker *= libvirt'
	expect_out 'replica *= REPLICA-HOST:PORT *# edit'
	expect_out '# disks: vda (/images/web01.qcow2, qcow2), vdb (/dev/vg0/web01-data, raw)'
	expect_out '# not replicated: .*hdc (a cdrom, not a disk).*'
	expect_out '# not replicated: .*vdc (a network disk (rbd): .*'
	expect_out '# vdb is raw: each cycle reads all of it.*'
	expect_out '# \[vm cd-only\]: domain cd-only has no disk replicad can replicate'
else
	echo "FAIL: replctl discover --uri test://..." >&2
	sed 's/^/  stderr: /' "$TMP/err" >&2
	fail=$((fail + 1))
fi
expect 1 'cannot connect to libvirt at qemu:///system?socket=' \
    discover --uri "qemu:///system?socket=$TMP/none.sock"

# --help and --version: stdout, exit 0.
for h in -h --help; do
	if "$REPLCTL" $h >"$TMP/out" 2>"$TMP/err" &&
	    grep -q '^usage: replctl' "$TMP/out" &&
	    grep -q 'failover VM --test --cleanup' "$TMP/out" &&
	    grep -q 'definition VM \[--point ID\]' "$TMP/out" &&
	    grep -q 'discover \[--uri URI\]' "$TMP/out" &&
	    grep -q '3 cannot reach replicad' "$TMP/out" &&
	    [ ! -s "$TMP/err" ]; then
		pass=$((pass + 1))
	else
		echo "FAIL: replctl $h" >&2
		fail=$((fail + 1))
	fi
done
if [ "$("$REPLCTL" --version)" = "replctl 0.8.0" ]; then
	pass=$((pass + 1))
else
	echo "FAIL: replctl --version" >&2
	fail=$((fail + 1))
fi

echo "replctl_usage: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
