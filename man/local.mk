# SPDX-License-Identifier: MIT
dist_man_MANS += man/nesa.7 man/nesa-profile.1 man/nesa-partition.1 man/nesa-quantize.1 \
	man/nesa-decompose.1 man/nesa-run-shard.1 man/nesa-route.1 \
	man/nesa-archive.5 man/nesa-graph.5 man/nesa-stream.5

# Structural lint of every page: mandoc when present, groff otherwise.
check-local: check-man
check-man:
	@fail=0; for m in $(dist_man_MANS); do \
	  if test -n "$(MANDOC)"; then \
	    $(MANDOC) -Tlint -Wwarning $(srcdir)/$$m || fail=1; \
	  else \
	    $(GROFF) -mdoc -ww -z $(srcdir)/$$m || fail=1; \
	  fi; \
	done; test $$fail = 0
.PHONY: check-man
