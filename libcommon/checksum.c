/* SPDX-License-Identifier: MIT */
/*
 * CRC-32C in three versions: a byte-at-a-time reference, slicing-by-8 for
 * any CPU, and the SSE4.2 crc32 instruction on three lanes; see checksum.h.
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include "checksum.h"

#define POLY 0x82f63b78u

/* table[k][b]: the CRC register after byte b followed by k zero bytes. */
static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void
table_build(void)
{
	uint32_t c;
	int b, k, i;

	for (b = 0; b < 256; b++) {
		c = (uint32_t)b;
		for (i = 0; i < 8; i++)
			c = (c >> 1) ^ (POLY & (0u - (c & 1)));
		table[0][b] = c;
	}
	for (b = 0; b < 256; b++)
		for (k = 1; k < 8; k++)
			table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xff];
}

uint32_t
nesa_crc32c_ref(uint32_t crc, const void *p, size_t n)
{
	const unsigned char *b = p;
	uint32_t c = ~crc;

	pthread_once(&table_once, table_build);
	while (n-- > 0)
		c = (c >> 8) ^ table[0][(c ^ *b++) & 0xff];
	return ~c;
}

uint32_t
nesa_crc32c_portable(uint32_t crc, const void *p, size_t n)
{
	const unsigned char *b = p;
	uint32_t c = ~crc;

	pthread_once(&table_once, table_build);
	/* Eight bytes per step, as little-endian words whatever the host order. */
	for (; n >= 8; n -= 8, b += 8) {
		uint32_t lo = c ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);

		c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
		    table[4][lo >> 24] ^ table[3][b[4]] ^ table[2][b[5]] ^ table[1][b[6]] ^ table[0][b[7]];
	}
	while (n-- > 0)
		c = (c >> 8) ^ table[0][(c ^ *b++) & 0xff];
	return ~c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

/*
 * The crc32 instruction computes exactly this CRC, 8 bytes at a time, but
 * each one waits for the previous result (3 cycles on current x86 cores)
 * while the CPU could start one a cycle.  So long buffers go as blocks of
 * three LANE-byte lanes with independent registers, joined afterwards:
 * the raw register is linear, so after lanes a, b, c (b and c started from
 * 0) it is shift(shift(a) ^ b) ^ c, where shift(x) is x carried through
 * LANE zero bytes, a 32-bit linear map applied from 4 tables of 256
 * entries (lane_shift).  About three times the single-register speed.
 */
#define LANE 2048
static uint32_t lane_shift[4][256];

__attribute__((target("sse4.2"))) static uint32_t
zeros_sse42(uint32_t c, size_t n)
{
	for (; n >= 8; n -= 8)
		c = (uint32_t)_mm_crc32_u64(c, 0);
	return c;
}

/* lane_shift[k][b] = shift(b << 8k), from the shifts of the 32 unit registers. */
__attribute__((target("sse4.2"))) static void
lane_shift_build(void)
{
	uint32_t unit[32];
	int i, k, b;

	for (i = 0; i < 32; i++)
		unit[i] = zeros_sse42(1u << i, LANE);
	for (k = 0; k < 4; k++)
		for (b = 0; b < 256; b++) {
			uint32_t v = 0;

			for (i = 0; i < 8; i++)
				if (b & (1 << i))
					v ^= unit[8 * k + i];
			lane_shift[k][b] = v;
		}
}

static uint32_t
shift_lane(uint32_t c)
{
	return lane_shift[0][c & 0xff] ^ lane_shift[1][(c >> 8) & 0xff] ^ lane_shift[2][(c >> 16) & 0xff] ^
	       lane_shift[3][c >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t
crc32c_sse42(uint32_t crc, const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t c = ~crc;
	uint64_t v, w, x, c1, c2;
	size_t i;

	for (; n > 0 && ((uintptr_t)b & 7) != 0; n--)
		c = _mm_crc32_u8((uint32_t)c, *b++);
	for (; n >= 3 * LANE; n -= 3 * LANE, b += 3 * LANE) {
		c1 = 0;
		c2 = 0;
		for (i = 0; i < LANE; i += 8) {
			memcpy(&v, b + i, 8);
			memcpy(&w, b + LANE + i, 8);
			memcpy(&x, b + 2 * LANE + i, 8);
			c = _mm_crc32_u64(c, v);
			c1 = _mm_crc32_u64(c1, w);
			c2 = _mm_crc32_u64(c2, x);
		}
		c = shift_lane(shift_lane((uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
	}
	for (; n >= 8; n -= 8, b += 8) {
		memcpy(&v, b, 8);
		c = _mm_crc32_u64(c, v);
	}
	for (; n > 0; n--)
		c = _mm_crc32_u8((uint32_t)c, *b++);
	return ~(uint32_t)c;
}
#define HAVE_SSE42_CRC 1
#endif

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn best = nesa_crc32c_portable;
static const char *best_name = "portable";
static pthread_once_t pick_once = PTHREAD_ONCE_INIT;

static void
pick(void)
{
#ifdef HAVE_SSE42_CRC
	__builtin_cpu_init();
	if (__builtin_cpu_supports("sse4.2")) {
		lane_shift_build();
		best = crc32c_sse42;
		best_name = "sse4.2";
	}
#endif
}

uint32_t
nesa_crc32c(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&pick_once, pick);
	return best(crc, p, n);
}

const char *
nesa_crc32c_impl(void)
{
	pthread_once(&pick_once, pick);
	return best_name;
}
