#!/bin/sh
# /init of the iked VM's initramfs (PID 1). The host reads lines starting with
# "PYIKE-VM:" on the first serial port (the console); the second serial port is a
# plain shell the host uses to ask for `ip xfrm state` and the like.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# Debian's loader finds multiarch libraries through ld.so.cache, which we do not ship.
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mark() { echo "PYIKE-VM: $*"; }
mark "init $(uname -r)"

# Overlay written by the host for this run: addresses and iked's arguments.
. /etc/pyike-vm.env

while read -r m; do
	insmod "/modules/$m" || mark "insmod $m failed"
done < /modules/order
mark "modules $(wc -l < /modules/order)"

IP=/usr/sbin/ip-full
$IP link set lo up
$IP link set eth0 up
case "$VM_ADDR" in
*:*) $IP addr add "$VM_ADDR" dev eth0 nodad ;;  # usable at once, no DAD wait
*) $IP addr add "$VM_ADDR" dev eth0 ;;
esac
# The inner (tunnel) address lives on lo; the route to the home machine's inner
# address only has to exist: the XFRM policy iked installs sends matching packets
# through ESP (RFC 4301 4.4.1), the rest would go out cleartext and show in captures.
# "src" makes packets the guest starts leave from the tunnel address, which the
# policy covers, instead of eth0's outer address (RFC 6724 would pick that one).
$IP -6 addr add "$VM_INNER/128" dev lo
$IP -6 route add "$HOME_INNER/128" dev eth0 src "$VM_INNER"

# A one-line SMTP-ish service on port 25: banner, read a line, echo it back.
cat > /bin/smtp25 <<'EOS'
#!/bin/sh
echo "220 namorar.example.com ESMTP pyike-vm"
read -r line
echo "250 got: $line"
EOS
chmod 755 /bin/smtp25
nc -ll -p 25 -e /bin/smtp25 &
# Bulk data both ways, in full-size segments: port 26 answers the SHA-256 of all it
# received (up to the client's FIN), port 27 sends $BULK_BYTES of a fixed pattern.
cat > /bin/sum26 <<'EOS'
#!/bin/sh
sha256sum | cut -d' ' -f1
EOS
cat > /bin/send27 <<'EOS'
#!/bin/sh
. /etc/pyike-vm.env
yes "pyike through kernel ESP" | head -c "$BULK_BYTES"
EOS
chmod 755 /bin/sum26 /bin/send27
nc -ll -p 26 -e /bin/sum26 &
nc -ll -p 27 -e /bin/send27 &

chmod 700 /etc/iked/private
chmod 600 /etc/iked.conf /etc/iked/private/* 2>/dev/null
# iked with a broken file logs "no valid configuration rules found" and runs on
# with no policy: check the file first (-n) so the host hears of it at once.
if ! /usr/sbin/iked -n $IKED_ARGS -f /etc/iked.conf; then
	mark "iked exited: configuration rejected (iked -n)"
	while :; do sleep 3600; done
fi
# iked logs to stderr with -d: straight onto the console the host reads.
/usr/sbin/iked $IKED_ARGS -f /etc/iked.conf &
IKED_PID=$!

# Raw, no echo and no interactive shell (whose line editor echoes), so the host
# reads back only what the commands print.
setsid sh -c 'exec </dev/ttyS1 >/dev/ttyS1 2>&1; stty raw -echo
	while read -r line; do eval "$line"; done' &

i=0
while [ $i -lt 50 ]; do
	if [ -S /var/run/iked.sock ]; then break; fi
	if ! kill -0 $IKED_PID 2>/dev/null; then mark "iked exited"; break; fi
	sleep 0.2
	i=$((i + 1))
done
if kill -0 $IKED_PID 2>/dev/null; then mark "READY iked $IKED_PID"; fi

while :; do sleep 3600; done
