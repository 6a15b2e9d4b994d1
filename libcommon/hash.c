/* SPDX-License-Identifier: MIT */
/*
 * sha256 helpers over libsodium; see hash.h.  Kept apart from shard.c
 * because they are not about archives: model.c hashes source files with
 * them, and a module of their own lets such code say what it depends on.
 *
 * Not for: anything keyed or secret; these are integrity checks against
 * accidental or deliberate corruption of data whose digest is known.
 */
#include "config.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "hash.h"
#include "xio.h"

#define READ_CHUNK ((size_t)1 << 16) /* bytes per fread() while hashing a file */

/* The name of path in messages. */
static const char *
disp(const char *path)
{
	return nesa_is_stdio(path) ? "standard input" : path;
}

static bool
sodium_ready(void)
{
	/* Idempotent and thread-safe; returns 1 when already initialised. */
	return sodium_init() >= 0;
}

void
nesa_sha256(const void *data, size_t n, unsigned char out[NESA_SHA256_BYTES])
{
	static const unsigned char empty;

	crypto_hash_sha256(out, n > 0 ? data : &empty, n);
}

char *
nesa_sha256_hex(const unsigned char hash[NESA_SHA256_BYTES], char out[NESA_SHA256_HEX])
{
	/* libsodium writes lowercase digits and the NUL. */
	return sodium_bin2hex(out, NESA_SHA256_HEX, hash, NESA_SHA256_BYTES);
}

bool
nesa_sha256_from_hex(const char *hex, unsigned char out[NESA_SHA256_BYTES])
{
	size_t n;

	/* The length test comes first so the decoder never sees a partial hash. */
	return hex != NULL && strlen(hex) == 2 * NESA_SHA256_BYTES &&
	       sodium_hex2bin(out, NESA_SHA256_BYTES, hex, 2 * NESA_SHA256_BYTES, NULL, &n, NULL) == 0 &&
	       n == NESA_SHA256_BYTES;
}

enum nesa_status
nesa_sha256_file(const char *path, unsigned char out[NESA_SHA256_BYTES], struct nesa_err *err)
{
	crypto_hash_sha256_state h;
	unsigned char buf[READ_CHUNK];
	enum nesa_status s;
	size_t n;
	FILE *fp;

	if (!sodium_ready())
		return nesa_err_set(err, NESA_EINTERNAL, "cannot initialise libsodium");
	s = nesa_in_open(path, &fp, err);
	if (s != NESA_OK)
		return s;
	crypto_hash_sha256_init(&h);
	while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
		crypto_hash_sha256_update(&h, buf, n);
	if (ferror(fp)) {
		s = nesa_err_sys(err, NESA_EIO, "cannot read '%s'", disp(path));
		nesa_in_close(fp);
		return s;
	}
	nesa_in_close(fp);
	crypto_hash_sha256_final(&h, out);
	return NESA_OK;
}
