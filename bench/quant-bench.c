/* SPDX-License-Identifier: MIT */
/*
 * nesa-quant-bench: speed of the quantization kernels, for
 * bench/quantize-speed.sh.
 *
 *   nesa-quant-bench quantize TYPE MIB
 *       quantizes MIB MiB of f32 (random, in cache-sized pieces of one
 *       buffer larger than the caches) with nesa_quant_from_f32 on one
 *       thread; prints "quantize TYPE ISA GB/s" (f32 input bytes per second)
 *   nesa-quant-bench matmul TYPE OUT IN ROWS THREADS
 *       times nesa_matmul with a random (OUT, IN) weight of TYPE against
 *       OpenBLAS on the same weight in f32 (sgemv for ROWS = 1, sgemm
 *       otherwise), both on THREADS threads; prints "matmul TYPE ISA OUT IN
 *       ROWS us_type us_f32 ratio weight_GB/s"
 *
 * NESA_ISA=ref|avx2|avx512 lowers the kernel level.  Each figure is the
 * best of several timed runs after a warm-up, in CPU time of the process
 * when on one thread (a busy machine's other programs do not count), wall
 * time otherwise.  Not installed; not a nesa tool.
 */
#include "config.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nesa.h"
#include "linalg.h"
#include "parallel.h"
#include "quant.h"

#define EX_USAGE 64

/*
 * CPU time of the process when it runs on one thread, so that other
 * programs on a busy machine do not count; wall time with more threads.
 */
static int use_cpu_time = 1;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(use_cpu_time ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;

static float
randf(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static int
usage(void)
{
	fprintf(stderr, "usage: nesa-quant-bench quantize type mib\n"
	                "       nesa-quant-bench matmul type out in rows threads\n");
	return EX_USAGE;
}

static int
type_of(const char *name, enum nesa_dtype *out)
{
	struct nesa_err err;

	if (nesa_dtype_from_name(name, out, &err) != NESA_OK) {
		fprintf(stderr, "nesa-quant-bench: %s\n", err.msg);
		return 0;
	}
	return 1;
}

static int
bench_quantize(enum nesa_dtype type, long mib)
{
	/* A 64 MiB source, larger than the caches, quantized 1 MiB at a time. */
	const int64_t piece = 1 << 18, total = (int64_t)16 << 20;
	float *x = malloc((size_t)total * sizeof *x);
	size_t bytes;
	unsigned char *y;
	double best = 1e30;
	int64_t i, done;
	int run;

	if (!nesa_dtype_bytes(type, piece, &bytes) || x == NULL) {
		fprintf(stderr, "nesa-quant-bench: %s does not fit pieces of %lld\n", nesa_dtype_name(type),
		        (long long)piece);
		free(x);
		return 1;
	}
	y = malloc(bytes * (size_t)(total / piece));
	if (y == NULL) {
		free(x);
		return 1;
	}
	for (i = 0; i < total; i++)
		x[i] = randf();
	for (run = 0; run < 4; run++) {
		double t0 = now(), t;

		for (done = 0; done < (int64_t)mib << 18; done += piece) {
			int64_t at = done % total;

			nesa_quant_from_f32(type, x + at, y + bytes * (size_t)(at / piece), piece);
		}
		t = now() - t0;
		if (run > 0 && t < best)
			best = t;
	}
	printf("quantize %s %s %.3f\n", nesa_dtype_name(type), nesa_isa_name(nesa_quant_isa()),
	       (double)mib * 1048576.0 / best / 1e9);
	free(x);
	free(y);
	return 0;
}

static int
bench_matmul(enum nesa_dtype type, int64_t out, int64_t in, int64_t rows)
{
	size_t row_bytes;
	float *w = malloc((size_t)(out * in) * sizeof *w);
	float *x = malloc((size_t)(rows * in) * sizeof *x);
	float *y = malloc((size_t)(rows * out) * sizeof *y);
	unsigned char *q;
	double best_q = 1e30, best_f = 1e30;
	int64_t i, reps;
	int run, k;

	if (!nesa_dtype_bytes(type, in, &row_bytes) || w == NULL || x == NULL || y == NULL) {
		fprintf(stderr, "nesa-quant-bench: %s does not fit rows of %lld\n", nesa_dtype_name(type),
		        (long long)in);
		return 1;
	}
	q = malloc(row_bytes * (size_t)out);
	if (q == NULL)
		return 1;
	for (i = 0; i < out * in; i++)
		w[i] = randf() * 0.05f;
	for (i = 0; i < rows * in; i++)
		x[i] = randf();
	for (i = 0; i < out; i++)
		nesa_quant_from_f32(type, w + i * in, q + (size_t)i * row_bytes, in);
	/* Enough calls per timing for about 20 ms of f32 work. */
	reps = 1 + (int64_t)(4e8 / (double)(out * in * rows + 1));
	/*
	 * All of nesa's runs first, then OpenBLAS's: OpenBLAS threads keep
	 * spinning for a while after a call and would steal the cores.
	 */
	for (run = 0; run < 6; run++) {
		double t0 = now(), t;

		for (k = 0; k < reps; k++)
			nesa_matmul(type, q, row_bytes, out, in, x, rows, y);
		t = (now() - t0) / (double)reps;
		if (run > 0 && t < best_q)
			best_q = t;
	}
	for (run = 0; run < 6; run++) {
		double t0 = now(), t;

		for (k = 0; k < reps; k++) {
			if (rows == 1)
				cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1.0f, w, (int)in, x, 1,
				            0.0f, y, 1);
			else
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)in,
				            1.0f, x, (int)in, w, (int)in, 0.0f, y, (int)out);
		}
		t = (now() - t0) / (double)reps;
		if (run > 0 && t < best_f)
			best_f = t;
	}
	printf("matmul %s %s %lld %lld %lld %.2f %.2f %.2f %.2f\n", nesa_dtype_name(type),
	       nesa_isa_name(nesa_quant_isa()), (long long)out, (long long)in, (long long)rows,
	       best_q * 1e6, best_f * 1e6, best_f / best_q, (double)(row_bytes * (size_t)out) / best_q / 1e9);
	free(w);
	free(x);
	free(y);
	free(q);
	return 0;
}

int
main(int argc, char **argv)
{
	const char *isa = getenv("NESA_ISA");
	enum nesa_dtype type;
	int rc;

	if (isa != NULL)
		nesa_quant_set_isa(strcmp(isa, "ref") == 0    ? NESA_ISA_REF
		                   : strcmp(isa, "avx2") == 0 ? NESA_ISA_AVX2
		                                              : NESA_ISA_AVX512);
	if (argc == 4 && strcmp(argv[1], "quantize") == 0 && type_of(argv[2], &type)) {
		nesa_linalg_set_threads(1);
		rc = bench_quantize(type, atol(argv[3]) > 0 ? atol(argv[3]) : 256);
	} else if (argc == 7 && strcmp(argv[1], "matmul") == 0 && type_of(argv[2], &type)) {
		nesa_linalg_set_threads(atoi(argv[6]) > 0 ? atoi(argv[6]) : 1);
		use_cpu_time = atoi(argv[6]) <= 1;
		rc = bench_matmul(type, atol(argv[3]), atol(argv[4]), atol(argv[5]) > 0 ? atol(argv[5]) : 1);
	} else {
		return usage();
	}
	nesa_parallel_shutdown();
	return rc;
}
