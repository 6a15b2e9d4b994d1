/* SPDX-License-Identifier: MIT */
/*
 * The nesa version: the single source of truth.  configure reads it through
 * build-aux/version.sh, the tools print it for -V.
 */
#ifndef NESA_VERSION_H
#define NESA_VERSION_H

#define NESA_VERSION_MAJOR 0
#define NESA_VERSION_MINOR 1
#define NESA_VERSION_PATCH 0

#define NESA_STR_(x) #x
#define NESA_STR(x) NESA_STR_(x)
#define NESA_VERSION_STRING \
	NESA_STR(NESA_VERSION_MAJOR) "." NESA_STR(NESA_VERSION_MINOR) "." NESA_STR(NESA_VERSION_PATCH)

#endif
