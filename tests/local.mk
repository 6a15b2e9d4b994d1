# SPDX-License-Identifier: MIT
# Unit tests (cmocka, TAP output) and shell tests of the tools.

# Reference data is never copied into the project: --with-data at configure
# time, NESA_DATA at test time, ../shared/data beside the sources otherwise.
AM_TESTS_ENVIRONMENT = \
	NESA_BINDIR='$(abs_top_builddir)/tools'; export NESA_BINDIR; \
	NESA_BUILDDIR='$(abs_top_builddir)'; export NESA_BUILDDIR; \
	NESA_SRCDIR='$(abs_top_srcdir)'; export NESA_SRCDIR; \
	NESA_TEST_DATA='$(abs_top_srcdir)/tests/data'; export NESA_TEST_DATA; \
	NESA_MODELS='$(abs_top_srcdir)/share/models'; export NESA_MODELS; \
	NESA_MANDIR='$(abs_top_srcdir)/man'; export NESA_MANDIR; \
	OPENBLAS_NUM_THREADS=1; export OPENBLAS_NUM_THREADS; \
	SSHD='$(SSHD)'; export SSHD; \
	: $${NESA_DATA:=$${NESA_DATA_DIR:-$(NESA_DATA_DIR)}}; \
	test -n "$$NESA_DATA" || NESA_DATA='$(abs_top_srcdir)/../shared/data'; export NESA_DATA; \
	CMOCKA_MESSAGE_OUTPUT=TAP; export CMOCKA_MESSAGE_OUTPUT;

TEST_EXTENSIONS = .sh
LOG_DRIVER = env AM_TAP_AWK='$(AWK)' $(SHELL) $(top_srcdir)/build-aux/tap-driver.sh
LOG_COMPILER = $(SHELL) $(top_srcdir)/tests/unit/cmocka-tap.sh
SH_LOG_COMPILER = $(SHELL)

AM_DISTCHECK_CONFIGURE_FLAGS = --with-data='$(abs_top_srcdir)/../shared/data'

if HAVE_CMOCKA
UNIT_TESTS = \
	tests/unit/test-err \
	tests/unit/test-dtype \
	tests/unit/test-tensor \
	tests/unit/test-xio \
	tests/unit/test-shard \
	tests/unit/test-stream \
	tests/unit/test-checksum \
	tests/unit/test-npy \
	tests/unit/test-tokenizer \
	tests/unit/test-gguf \
	tests/unit/test-safetensors \
	tests/unit/test-llama2c \
	tests/unit/test-quant \
	tests/unit/test-ops \
	tests/unit/test-exec \
	tests/unit/test-models \
	tests/unit/test-planner \
	tests/unit/test-profile \
	tests/unit/test-quantize \
	tests/unit/test-decompose
check_PROGRAMS += $(UNIT_TESTS)
TESTS += $(UNIT_TESTS)
UNIT_LDADD = $(NESA_LIBS) $(CMOCKA_LIBS)
UNIT_CPPFLAGS = $(AM_CPPFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_err_LDADD = $(UNIT_LDADD)
tests_unit_test_err_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_dtype_LDADD = $(UNIT_LDADD)
tests_unit_test_dtype_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_tensor_LDADD = $(UNIT_LDADD)
tests_unit_test_tensor_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_xio_LDADD = $(UNIT_LDADD)
tests_unit_test_xio_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_shard_LDADD = $(UNIT_LDADD)
tests_unit_test_shard_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_stream_LDADD = $(UNIT_LDADD)
tests_unit_test_stream_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_checksum_LDADD = $(UNIT_LDADD)
tests_unit_test_checksum_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_npy_LDADD = $(UNIT_LDADD)
tests_unit_test_npy_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_tokenizer_LDADD = $(UNIT_LDADD)
tests_unit_test_tokenizer_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_gguf_LDADD = $(UNIT_LDADD)
tests_unit_test_gguf_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_safetensors_LDADD = $(UNIT_LDADD)
tests_unit_test_safetensors_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_llama2c_LDADD = $(UNIT_LDADD)
tests_unit_test_llama2c_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_quant_LDADD = $(UNIT_LDADD)
tests_unit_test_quant_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_ops_LDADD = $(UNIT_LDADD)
tests_unit_test_ops_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_exec_LDADD = $(UNIT_LDADD)
tests_unit_test_exec_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_models_LDADD = $(UNIT_LDADD)
tests_unit_test_models_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_planner_LDADD = $(UNIT_LDADD)
tests_unit_test_planner_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_profile_LDADD = $(UNIT_LDADD)
tests_unit_test_profile_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_quantize_LDADD = $(UNIT_LDADD)
tests_unit_test_quantize_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_test_decompose_LDADD = $(UNIT_LDADD)
tests_unit_test_decompose_CPPFLAGS = $(UNIT_CPPFLAGS)
endif

CLI_TESTS = \
	tests/cli/common-help-version.sh \
	tests/cli/common-usage-errors.sh \
	tests/cli/common-synopsis.sh \
	tests/cli/route-stories.sh \
	tests/cli/route-vision.sh \
	tests/cli/route-bundled.sh \
	tests/cli/route-errors.sh \
	tests/cli/pipeline-local.sh \
	tests/cli/pipeline-tcp.sh \
	tests/cli/pipeline-ssh.sh \
	tests/cli/pipeline-failures.sh \
	tests/cli/pipeline-recovery.sh \
	tests/cli/profile-node.sh \
	tests/cli/profile-model.sh \
	tests/cli/profile-link.sh \
	tests/cli/partition-plan.sh \
	tests/cli/partition-plan-many.sh \
	tests/cli/quantize-errors.sh \
	tests/cli/quantize-stories.sh \
	tests/cli/quantize-stream.sh \
	tests/cli/decompose-stories.sh \
	tests/cli/decompose-errors.sh
TESTS += $(CLI_TESTS)
EXTRA_DIST += $(CLI_TESTS) tests/cli/lib.sh tests/unit/testutil.h tests/unit/testmodel.h tests/unit/cmocka-tap.sh \
	tests/data/tokenizer/vocab.json tests/data/tokenizer/merges.txt tests/data/tokenizer/README \
	tests/data/story_ref_tokens.i32 tests/data/story_ref_logits.f32 \
	tests/data/hf-gpt2/README.md tests/data/hf-gpt2/config.json tests/data/hf-gpt2/merges.txt \
	tests/data/hf-gpt2/model.safetensors tests/data/hf-gpt2/ref_logits.f32 \
	tests/data/hf-gpt2/ref_text.txt tests/data/hf-gpt2/ref_tokens.i32 tests/data/hf-gpt2/vocab.json \
	tests/data/hf-llama/README.md tests/data/hf-llama/config.json \
	tests/data/hf-llama/model.safetensors tests/data/hf-llama/ref_logits.f32 \
	tests/data/hf-llama/ref_tokens.i32
