/* SPDX-License-Identifier: MIT */
/*
 * CRC-32C (Castagnoli), the checksum of the tensor stream (nesa-stream(5)).
 *
 * Why not zlib's CRC-32: every byte of a stream is checksummed by its
 * writer and again by its reader, and zlib's crc32 (about 3 GB/s a core)
 * was the largest cost of moving tensors through a pipe.  CRC-32C has the
 * same strength and an instruction of its own on x86 (SSE4.2), several
 * times faster (bench/stream-throughput.sh prints both).  The portable
 * version works everywhere, so one build runs on every node.
 *
 * Reflected polynomial 0x82f63b78; the register is preset to all ones and
 * the result inverted, so the CRC of no bytes is 0 and of the nine ASCII
 * bytes "123456789" is 0xe3069283.
 */
#ifndef NESA_CHECKSUM_H
#define NESA_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/*
 * The CRC-32C of n bytes at p continuing crc, the CRC of the bytes before
 * them (0 to start): nesa_crc32c(nesa_crc32c(0, a, na), b, nb) is the CRC
 * of a followed by b.  The fastest version this CPU runs.
 */
uint32_t nesa_crc32c(uint32_t crc, const void *p, size_t n);

/* The same, one byte at a time from a table: the reference the others are tested against. */
uint32_t nesa_crc32c_ref(uint32_t crc, const void *p, size_t n);

/* The same, eight bytes at a time from tables: the version for CPUs without a CRC instruction. */
uint32_t nesa_crc32c_portable(uint32_t crc, const void *p, size_t n);

/* "sse4.2" or "portable": which version nesa_crc32c uses here. */
const char *nesa_crc32c_impl(void);

#endif
