/* SPDX-License-Identifier: MIT */
/*
 * TCP helpers: addresses "host:port", "[v6addr]:port" or ":port" (all
 * interfaces), and "tcp://" URLs of the same.
 */
#ifndef NESA_NET_H
#define NESA_NET_H

#include "err.h"

/* A listening socket on addr; NESA_EINVAL for a malformed address. */
enum nesa_status nesa_net_listen(const char *addr, int *fd, struct nesa_err *err);

/* Accepts one connection (TCP_NODELAY set); -1 with errno on failure. */
int nesa_net_accept(int lfd);

/* Connects to addr (a "tcp://" prefix is allowed), giving up after timeout_ms. */
enum nesa_status nesa_net_connect(const char *addr, int timeout_ms, int *fd, struct nesa_err *err);

/* The port a listening socket is bound to (for ":0"), or -1. */
int nesa_net_port(int fd);

#endif
