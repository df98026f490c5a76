/*
 * pfkey_shim.c - LD_PRELOAD library that lets OpenIKED (Debian openiked 7.2)
 * run on a kernel without PF_KEY and without kernel IPsec.
 *
 * Test harness only (pyike interop/iked.py builds it with gcc at run time).
 *
 * iked on Linux installs SAs and flows only through PF_KEY v2 (RFC 2367).  This
 * kernel has no PF_KEY (socket() fails with EAFNOSUPPORT), so:
 *
 *  1. socket(PF_KEY, SOCK_RAW, PF_KEY_V2) returns an AF_UNIX SOCK_SEQPACKET
 *     socket connected to the userspace stand-in (pfkey_standin.py) whose path
 *     is in $PYIKE_PFKEY_SOCK.  SEQPACKET keeps message boundaries, which iked
 *     relies on: it peeks the 16-byte sadb_msg header, then read()s exactly
 *     sadb_msg_len * 8 bytes.
 *
 *  2. setsockopt(IP_IPSEC_POLICY / IPV6_IPSEC_POLICY) succeeds without doing
 *     anything.  iked sets a "bypass" policy on its IKE sockets so that IKE
 *     itself is never sent through IPsec (udp_bind: "failed to bypass IPsec on
 *     IKE socket"); with no kernel IPsec there is nothing to bypass.
 *
 *  3. poll() on the PF_KEY socket alone with a tiny timeout gets a longer one.
 *     pfkey_reply() waits PFKEY_REPLY_TIMEOUT / 1000 = 1 ms for the kernel's
 *     answer; a Python process usually answers in ~0.1 ms but a busy machine
 *     can exceed 1 ms, and a missed reply makes iked fail the SA (seen: a
 *     rekey answered with NO_PROPOSAL_CHOSEN) or, for SADB_REGISTER at
 *     start-up, exit.  $PYIKE_PFKEY_REPLY_MS (default 2000) is used instead.
 *     The socket is recognised by what it is (AF_UNIX SEQPACKET connected to
 *     $PYIKE_PFKEY_SOCK), not by its fd number: iked's parent opens it and
 *     hands it to the ikev2 process over imsg (SCM_RIGHTS), and that process,
 *     which never called socket(PF_KEY), is the one waiting for replies.
 *     Only a single-fd poll with a timeout of at most 10 ms is looked at, so
 *     libevent's main loop (epoll) is left alone.
 *
 * Everything else goes to the real libc functions (dlsym(RTLD_NEXT)).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PF_KEY
#define PF_KEY 15
#endif
#ifndef IP_IPSEC_POLICY
#define IP_IPSEC_POLICY 16 /* <linux/in.h> */
#endif
#ifndef IPV6_IPSEC_POLICY
#define IPV6_IPSEC_POLICY 34 /* <linux/in6.h> */
#endif

#define SHORT_POLL_MS 10            /* polls at most this short are pfkey_reply's */
#define DEFAULT_REPLY_MS 2000

static void shim_log(const char *msg)
{
	/* stderr is iked's log when it runs with -d; keep one greppable prefix. */
	fprintf(stderr, "pfkey_shim: %s\n", msg);
}

int socket(int domain, int type, int protocol)
{
	static int (*real_socket)(int, int, int);
	struct sockaddr_un sun;
	const char *path;
	int fd, flags;

	if (real_socket == NULL)
		real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	if (domain != PF_KEY)
		return real_socket(domain, type, protocol);

	path = getenv("PYIKE_PFKEY_SOCK");
	if (path == NULL || strlen(path) >= sizeof(sun.sun_path)) {
		shim_log("PYIKE_PFKEY_SOCK unset or too long");
		errno = EAFNOSUPPORT;
		return -1;
	}
	/* Keep the caller's SOCK_CLOEXEC / SOCK_NONBLOCK, swap SOCK_RAW for SEQPACKET. */
	flags = type & (SOCK_CLOEXEC | SOCK_NONBLOCK);
	fd = real_socket(AF_UNIX, SOCK_SEQPACKET | flags, 0);
	if (fd == -1)
		return -1;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, path);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		int saved = errno;
		shim_log("cannot connect to the PF_KEY stand-in");
		close(fd);
		errno = saved;
		return -1;
	}
	shim_log("PF_KEY socket redirected to the stand-in");
	return fd;
}

int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
{
	static int (*real_setsockopt)(int, int, int, const void *, socklen_t);

	if (real_setsockopt == NULL)
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))
		    dlsym(RTLD_NEXT, "setsockopt");
	if ((level == IPPROTO_IP && optname == IP_IPSEC_POLICY) ||
	    (level == IPPROTO_IPV6 && optname == IPV6_IPSEC_POLICY))
		return 0; /* no kernel IPsec: nothing to bypass */
	return real_setsockopt(fd, level, optname, optval, optlen);
}

/* Is fd our stand-in connection (possibly received from another process)? */
static int is_pfkey_socket(int fd)
{
	struct sockaddr_un peer;
	socklen_t len = sizeof(peer);
	int type;
	socklen_t tlen = sizeof(type);
	const char *path = getenv("PYIKE_PFKEY_SOCK");

	if (path == NULL ||
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == -1 ||
	    type != SOCK_SEQPACKET)
		return 0;
	memset(&peer, 0, sizeof(peer));
	if (getpeername(fd, (struct sockaddr *)&peer, &len) == -1 ||
	    peer.sun_family != AF_UNIX)
		return 0;
	return strncmp(peer.sun_path, path, sizeof(peer.sun_path)) == 0;
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	static int (*real_poll)(struct pollfd *, nfds_t, int);
	static int reply_ms = -1;

	if (real_poll == NULL)
		real_poll = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
	if (nfds == 1 && timeout >= 0 && timeout <= SHORT_POLL_MS &&
	    is_pfkey_socket(fds[0].fd)) {
		if (reply_ms < 0) {
			const char *env = getenv("PYIKE_PFKEY_REPLY_MS");
			reply_ms = env != NULL ? atoi(env) : DEFAULT_REPLY_MS;
			if (reply_ms < timeout)
				reply_ms = timeout;
		}
		timeout = reply_ms;
	}
	return real_poll(fds, nfds, timeout);
}
