# SPDX-License-Identifier: MIT
# libcommon: all of nesa's logic, a convenience library linked into each tool.
noinst_LTLIBRARIES += libcommon/libnesacommon.la

libcommon_libnesacommon_la_SOURCES = \
	libcommon/alloc.c libcommon/alloc.h \
	libcommon/arch.c libcommon/arch.h \
	libcommon/chain.c libcommon/chain.h \
	libcommon/checksum.c libcommon/checksum.h \
	libcommon/cli.c libcommon/cli.h \
	libcommon/data.c libcommon/data.h \
	libcommon/decompose.c libcommon/decompose.h \
	libcommon/decompose-calib.c libcommon/decompose-model.c \
	libcommon/dtype.c libcommon/dtype.h \
	libcommon/err.c libcommon/err.h \
	libcommon/eval.c libcommon/eval.h \
	libcommon/exec.c libcommon/exec.h \
	libcommon/frame.c \
	libcommon/gguf.c libcommon/gguf.h \
	libcommon/graph.c libcommon/graph.h \
	libcommon/hash.c libcommon/hash.h \
	libcommon/import.c libcommon/import.h \
	libcommon/linalg.c libcommon/linalg.h \
	libcommon/llama2c.c libcommon/llama2c.h \
	libcommon/log.c libcommon/log.h \
	libcommon/model.c libcommon/model.h \
	libcommon/nesa.h \
	libcommon/net.c libcommon/net.h \
	libcommon/npy.c libcommon/npy.h \
	libcommon/ops.c libcommon/ops.h libcommon/ops-fast.c \
	libcommon/parallel.c libcommon/parallel.h \
	libcommon/pipeline.c libcommon/pipeline.h \
	libcommon/plan.c libcommon/plan.h \
	libcommon/planner.c libcommon/planner-search.c libcommon/planner.h \
	libcommon/profile.c libcommon/profile.h \
	libcommon/quant.c libcommon/quant.h \
	libcommon/quant-fast.c \
	libcommon/quantize.c libcommon/quantize.h \
	libcommon/safetensors.c libcommon/safetensors.h \
	libcommon/sample.c libcommon/sample.h \
	libcommon/serve.c libcommon/serve.h \
	libcommon/shard.c libcommon/shard.h \
	libcommon/shard-impl.h libcommon/shard-write.c \
	libcommon/stream.c libcommon/stream.h \
	libcommon/stream-impl.h \
	libcommon/tensor.c libcommon/tensor.h \
	libcommon/tokenizer.c libcommon/tokenizer.h \
	libcommon/tokenizer-impl.h libcommon/tokenizer-load.c \
	libcommon/version.h \
	libcommon/xio.c libcommon/xio.h
libcommon_libnesacommon_la_CPPFLAGS = $(AM_CPPFLAGS) $(BLAS_CFLAGS) $(LAPACKE_CFLAGS) \
	$(ZLIB_CFLAGS) $(LIBARCHIVE_CFLAGS) $(JANSSON_CFLAGS) $(SODIUM_CFLAGS)

# What every program linking libcommon needs.
NESA_LIBS = libcommon/libnesacommon.la $(LIBARCHIVE_LIBS) $(JANSSON_LIBS) $(SODIUM_LIBS) \
	$(LAPACKE_LIBS) $(BLAS_LIBS) $(ZLIB_LIBS) -lm
