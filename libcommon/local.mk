# SPDX-License-Identifier: MIT
# libcommon: all of nesa's logic, a convenience library linked into each tool.
noinst_LTLIBRARIES += libcommon/libnesacommon.la

libcommon_libnesacommon_la_SOURCES = \
	libcommon/alloc.c libcommon/alloc.h \
	libcommon/cli.c libcommon/cli.h \
	libcommon/dtype.c libcommon/dtype.h \
	libcommon/err.c libcommon/err.h \
	libcommon/linalg.c libcommon/linalg.h \
	libcommon/log.c libcommon/log.h \
	libcommon/nesa.h \
	libcommon/quant.c libcommon/quant.h \
	libcommon/tensor.c libcommon/tensor.h \
	libcommon/version.h \
	libcommon/xio.c libcommon/xio.h
libcommon_libnesacommon_la_CPPFLAGS = $(AM_CPPFLAGS) $(BLAS_CFLAGS) $(LAPACKE_CFLAGS) \
	$(ZLIB_CFLAGS) $(LIBARCHIVE_CFLAGS) $(JANSSON_CFLAGS) $(SODIUM_CFLAGS)

# What every program linking libcommon needs.
NESA_LIBS = libcommon/libnesacommon.la $(LIBARCHIVE_LIBS) $(JANSSON_LIBS) $(SODIUM_LIBS) \
	$(LAPACKE_LIBS) $(BLAS_LIBS) $(ZLIB_LIBS) -lm
