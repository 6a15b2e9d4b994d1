# SPDX-License-Identifier: MIT
# The six tools: thin mains over libcommon.
bin_PROGRAMS += tools/nesa-profile tools/nesa-partition tools/nesa-quantize \
	tools/nesa-decompose tools/nesa-run-shard tools/nesa-route
LDADD = $(NESA_LIBS)
