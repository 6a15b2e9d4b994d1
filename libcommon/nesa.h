/* SPDX-License-Identifier: MIT */
/*
 * Umbrella header for the tools: everything libcommon offers.
 */
#ifndef NESA_H
#define NESA_H

#include "alloc.h"
#include "cli.h"
#include "dtype.h"
#include "err.h"
#include "linalg.h"
#include "log.h"
#include "npy.h"
#include "quant.h"
#include "stream.h"
#include "tensor.h"
#include "version.h"
#include "xio.h"

#endif
