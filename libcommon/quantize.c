/* SPDX-License-Identifier: MIT */
/* Empty until its module lands. */
#include "config.h"
typedef int nesa_pending_module;
