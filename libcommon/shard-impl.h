/* SPDX-License-Identifier: MIT */
/*
 * Private to the shard module: what shard.c (the reader and the manifest
 * schema) and shard-write.c (the writer) share.  Nothing outside those two
 * files includes this header.
 *
 * The writer checks the caller's header and tensors with the very
 * functions the reader applies to an archive's manifest, only with a
 * different status for a violation (NESA_EINVAL for a caller's mistake,
 * NESA_EFORMAT for a bad file), so whatever nesa writes, nesa reads back.
 * Those checks have external linkage only so that both files can call
 * them; their names lack the nesa_ prefix to mark them as outside the API.
 */
#ifndef NESA_SHARD_IMPL_H
#define NESA_SHARD_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <sodium.h>

#include "shard.h"

static inline bool
sodium_ready(void)
{
	/* Idempotent and thread-safe; returns 1 when already initialised. */
	return sodium_init() >= 0;
}

/*
 * Copies an untrusted string into buf for a message: bytes outside printable
 * ASCII become '?' so a hostile name cannot drive the terminal, and long
 * names are cut with "...".
 */
static inline const char *
safe(const char *s, size_t len, char *buf, size_t size)
{
	size_t i, o = 0;

	for (i = 0; i < len && o + 4 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (i < len)
		buf[o++] = '.', buf[o++] = '.', buf[o++] = '.';
	buf[o] = '\0';
	return buf;
}

/*
 * Each check below returns NESA_OK or `bad` with a message in err naming
 * the offending key or tensor; NESA_ENOMEM where it allocates.  Defined in
 * shard.c.
 */

/* A tensor name against the rules of nesa_shard_check_name(); where may be NULL. */
enum nesa_status shard_check_name(const char *name, size_t len, const char *where,
                                  enum nesa_status bad, struct nesa_err *err);

/* The "model" object of top; *n_blocks is model.n_blocks. */
enum nesa_status shard_check_model(const json_t *top, enum nesa_status bad, json_int_t *n_blocks,
                                   struct nesa_err *err);

/* The "blocks" object of top: a range inside a model of n_blocks blocks. */
enum nesa_status shard_check_blocks(const json_t *top, json_int_t n_blocks, enum nesa_status bad,
                                    struct nesa_err *err);

/* No name appears twice among names[0..n). */
enum nesa_status shard_check_unique(const char *const *names, size_t n, enum nesa_status bad,
                                    struct nesa_err *err);

#endif
