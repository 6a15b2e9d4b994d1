/* SPDX-License-Identifier: MIT */
/*
 * sha256 helpers over libsodium: the digests that shard archives record for
 * every tensor (nesa-archive(5)) and that identify a model's source file.
 *
 * Not for: passwords or keyed hashing (use libsodium directly), nor the
 * CRC-32C checksums of the stream format (checksum.h).  shard.h includes
 * this header, so code written against shard.h keeps compiling.
 */
#ifndef NESA_HASH_H
#define NESA_HASH_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

/* Size of a raw sha256 digest and of its lowercase hex form with NUL. */
#define NESA_SHA256_BYTES 32
#define NESA_SHA256_HEX (2 * NESA_SHA256_BYTES + 1)

/* Hashes n bytes of data (NULL allowed when n is 0). */
void nesa_sha256(const void *data, size_t n, unsigned char out[NESA_SHA256_BYTES]);

/*
 * Hashes a whole file ("-" = standard input) in one streaming pass.
 * NESA_ENOENT if it cannot be opened, NESA_EIO on a read error.
 */
enum nesa_status nesa_sha256_file(const char *path, unsigned char out[NESA_SHA256_BYTES],
                                  struct nesa_err *err);

/* Writes the 64 lowercase hex digits of hash and a NUL into out; returns out. */
char *nesa_sha256_hex(const unsigned char hash[NESA_SHA256_BYTES], char out[NESA_SHA256_HEX]);

/*
 * Decodes exactly 64 hex digits (either case, nothing after them) into out.
 * False on any other input; out is then unspecified.
 */
bool nesa_sha256_from_hex(const char *hex, unsigned char out[NESA_SHA256_BYTES]);

#endif
