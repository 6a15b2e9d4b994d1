/* SPDX-License-Identifier: MIT */
/*
 * Quantized block types.  Each format is three things: a block struct whose
 * size a static_assert pins, a scalar _ref quantize/dequantize pair with a
 * zero-scale guard, and one row of the traits table.
 */
#ifndef NESA_QUANT_H
#define NESA_QUANT_H

#include "dtype.h"

/* Traits of a quantized dtype id (>= 16), or NULL if unknown. */
const struct nesa_dtype_traits *nesa_quant_traits(int dtype);

#endif
