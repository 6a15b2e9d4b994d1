# SPDX-License-Identifier: MIT
# Benchmarks: never part of `make check`; `make bench` runs them all.
bench_scripts =
noinst_PROGRAMS += bench/nesa-stream-bench
bench_nesa_stream_bench_SOURCES = bench/stream-bench.c
bench_nesa_stream_bench_LDADD = $(NESA_LIBS)
bench_scripts += bench/stream-throughput.sh bench/llama-compare.sh bench/pipeline.sh
bench_scripts += bench/planner-baselines.sh bench/planner-scale.sh bench/planner-reality.sh
noinst_PROGRAMS += bench/nesa-quant-bench
bench_nesa_quant_bench_SOURCES = bench/quant-bench.c
bench_nesa_quant_bench_LDADD = $(NESA_LIBS)
bench_scripts += bench/quantize-speed.sh bench/decompose-speed.sh
EXTRA_DIST += bench/accuracy.sh
bench-accuracy: all
	@NESA_DATA="$${NESA_DATA:-$${NESA_DATA_DIR:-$(NESA_DATA_DIR)}}"; \
	test -n "$$NESA_DATA" || NESA_DATA='$(abs_top_srcdir)/../shared/data'; \
	NESA_DATA="$$NESA_DATA" NESA_BINDIR='$(abs_top_builddir)/tools' \
	NESA_MODELS='$(abs_top_srcdir)/share/models' $(SHELL) $(srcdir)/bench/accuracy.sh
.PHONY: bench-accuracy
# The rank-against-perplexity curve of nesa-decompose: a table and an SVG plot in the build directory.
EXTRA_DIST += bench/decompose-curve.sh
bench-decompose: all
	@NESA_DATA="$${NESA_DATA:-$${NESA_DATA_DIR:-$(NESA_DATA_DIR)}}"; \
	test -n "$$NESA_DATA" || NESA_DATA='$(abs_top_srcdir)/../shared/data'; \
	NESA_DATA="$$NESA_DATA" NESA_BINDIR='$(abs_top_builddir)/tools' \
	NESA_BENCH_OUT='$(abs_top_builddir)' $(SHELL) $(srcdir)/bench/decompose-curve.sh
.PHONY: bench-decompose
EXTRA_DIST += bench/common.sh
EXTRA_DIST += $(bench_scripts)
bench: all
	@for b in $(bench_scripts); do \
	  echo "== $$b"; NESA_BINDIR='$(abs_top_builddir)/tools' NESA_BUILDDIR='$(abs_top_builddir)' \
	    NESA_SRCDIR='$(abs_top_srcdir)' $(SHELL) $(srcdir)/$$b || exit 1; \
	done
.PHONY: bench
