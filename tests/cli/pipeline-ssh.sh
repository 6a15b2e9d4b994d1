#!/bin/sh
# A real OpenSSH server on 127.0.0.1 (keys generated here, a free port) and
# a 3-stage generation where two stages run through ssh: the text equals the
# single-process text.
. "$(dirname "$0")/lib.sh"
need_data stories260K
S=$NESA_DATA/stories260K
sshd=${SSHD:-}
[ -x "$sshd" ] || sshd=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$sshd" ] || skip "sshd is not installed (Debian package openssh-server)"
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || skip "ssh client tools are not installed"

expect_exit 0 nesa-partition -o "$T/p" --stages 3 "$S/stories260K.bin"
ssh-keygen -q -t ed25519 -N '' -f "$T/host_key" || framework_failure "ssh-keygen failed"
ssh-keygen -q -t ed25519 -N '' -f "$T/user_key" || framework_failure "ssh-keygen failed"
cp "$T/user_key.pub" "$T/authorized_keys"
chmod 600 "$T/authorized_keys"
# Privilege separation needs this directory when sshd runs as root.
[ "$(id -u)" != 0 ] || [ -d /run/sshd ] || mkdir -p /run/sshd

sshd_pid=
trap '[ -z "$sshd_pid" ] || kill $sshd_pid 2>/dev/null; rm -rf "$T"' EXIT
for attempt in 1 2 3 4 5; do
	port=$(free_port) || framework_failure "no free port"
	cat >"$T/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $T/host_key
AuthorizedKeysFile $T/authorized_keys
PidFile $T/sshd.pid
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
PermitUserEnvironment no
CFG
	"$sshd" -D -e -f "$T/sshd_config" 2>>"$T/sshd.log" &
	sshd_pid=$!
	wait_port "$port" && break
	kill $sshd_pid 2>/dev/null
	sshd_pid=
done
[ -n "$sshd_pid" ] || framework_failure "cannot start sshd: $(tail -n 3 "$T/sshd.log")"

ssh_cmd="ssh -T -F /dev/null -i $T/user_key -p $port -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR 127.0.0.1"
$ssh_cmd true || framework_failure "cannot log in through the test sshd: $(tail -n 3 "$T/sshd.log")"

# The remote shell has its own PATH: name the binary and the archives fully.
rs=$NESA_BINDIR/nesa-run-shard
expect_exit 0 nesa-route -t 1 --stage "$T/p/stage-00.nsa" \
	--stage "$ssh_cmd $rs -t 1 $T/p/stage-01.nsa" \
	--stage "$ssh_cmd $rs -t 1 $T/p/stage-02.nsa" -l 256 &&
	{ compare "$S/expected_greedy_t0_n256.txt" "$T/out" || fail_ "greedy text through ssh stages differs"; }

# A remote stage that cannot load its archive is reported with its name.
expect_exit 69 nesa-route --stage "$T/p/stage-00.nsa" --stage "$ssh_cmd $rs $T/p/missing.nsa" \
	--stage "$T/p/stage-02.nsa" -l 5
grep -q "stage 1 (ssh" "$T/err" || fail_ "a failed remote stage is not named: $(cat "$T/err")"
exit $fail
