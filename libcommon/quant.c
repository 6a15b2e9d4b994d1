/* SPDX-License-Identifier: MIT */
/*
 * Quantized block types; see quant.h.  The table is empty until the
 * quantization formats land: dtype lookups of ids >= 16 find nothing.
 */
#include "config.h"

#include <stddef.h>

#include "quant.h"

const struct nesa_dtype_traits *
nesa_quant_traits(int dtype)
{
	(void)dtype;
	return NULL;
}
