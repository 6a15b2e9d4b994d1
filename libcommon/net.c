/* SPDX-License-Identifier: MIT */
/*
 * TCP helpers; see net.h.  Nagle's algorithm is off on every socket: frames
 * of a decode step are small and latency is what a pipeline pays per token.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net.h"

/* Splits addr into host (NULL for any) and port. */
static enum nesa_status
split(const char *addr, char *host, size_t hsize, char *port, size_t psize, struct nesa_err *err)
{
	const char *a = strncmp(addr, "tcp://", 6) == 0 ? addr + 6 : addr, *colon;
	size_t hl;

	if (a[0] == '[') {
		const char *close = strchr(a, ']');

		if (close == NULL || close[1] != ':')
			return nesa_err_set(err, NESA_EINVAL, "invalid address '%s': expected [v6]:port", addr);
		hl = (size_t)(close - a - 1);
		a++;
		colon = close + 1;
	} else {
		colon = strrchr(a, ':');
		if (colon == NULL)
			return nesa_err_set(err, NESA_EINVAL, "invalid address '%s': expected host:port", addr);
		hl = (size_t)(colon - a);
	}
	if (hl >= hsize || strlen(colon + 1) == 0 || strlen(colon + 1) >= psize)
		return nesa_err_set(err, NESA_EINVAL, "invalid address '%s'", addr);
	memcpy(host, a, hl);
	host[hl] = '\0';
	strcpy(port, colon + 1);
	return NESA_OK;
}

static void
nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

enum nesa_status
nesa_net_listen(const char *addr, int *fd, struct nesa_err *err)
{
	struct addrinfo hints, *res, *ai;
	char host[256], port[32];
	int rc, s = -1, one = 1;
	enum nesa_status st;

	*fd = -1;
	st = split(addr, host, sizeof host, port, sizeof port, err);
	if (st != NESA_OK)
		return st;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, &res);
	if (rc != 0)
		return nesa_err_set(err, NESA_EINVAL, "cannot listen on '%s': %s", addr, gai_strerror(rc));
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (s < 0)
			continue;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(s, ai->ai_addr, ai->ai_addrlen) == 0 && listen(s, 64) == 0)
			break;
		close(s);
		s = -1;
	}
	freeaddrinfo(res);
	if (s < 0)
		return nesa_err_sys(err, NESA_EIO, "cannot listen on '%s'", addr);
	*fd = s;
	return NESA_OK;
}

int
nesa_net_accept(int lfd)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd >= 0)
		nodelay(fd);
	return fd;
}

int
nesa_net_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

enum nesa_status
nesa_net_connect(const char *addr, int timeout_ms, int *fd, struct nesa_err *err)
{
	struct addrinfo hints, *res, *ai;
	char host[256], port[32];
	int rc, s = -1, saved = 0;
	enum nesa_status st;

	*fd = -1;
	st = split(addr, host, sizeof host, port, sizeof port, err);
	if (st != NESA_OK)
		return st;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host[0] != '\0' ? host : "localhost", port, &hints, &res);
	if (rc != 0)
		return nesa_err_set(err, NESA_EREMOTE, "cannot reach '%s': %s", addr, gai_strerror(rc));
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		struct pollfd p;
		socklen_t len = sizeof saved;
		int flags;

		s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (s < 0)
			continue;
		/* Non-blocking connect so a dead host costs timeout_ms, not minutes. */
		flags = fcntl(s, F_GETFL);
		fcntl(s, F_SETFL, flags | O_NONBLOCK);
		if (connect(s, ai->ai_addr, ai->ai_addrlen) == 0 ||
		    (errno == EINPROGRESS &&
		     (p.fd = s, p.events = POLLOUT, poll(&p, 1, timeout_ms > 0 ? timeout_ms : -1) == 1) &&
		     getsockopt(s, SOL_SOCKET, SO_ERROR, &saved, &len) == 0 && saved == 0)) {
			fcntl(s, F_SETFL, flags);
			break;
		}
		if (saved == 0)
			saved = errno != EINPROGRESS ? errno : ETIMEDOUT;
		close(s);
		s = -1;
	}
	freeaddrinfo(res);
	if (s < 0) {
		errno = saved;
		return nesa_err_sys(err, saved == ETIMEDOUT ? NESA_ETIMEOUT : NESA_EREMOTE, "cannot connect to '%s'", addr);
	}
	nodelay(s);
	*fd = s;
	return NESA_OK;
}
