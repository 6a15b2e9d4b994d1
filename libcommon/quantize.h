/* SPDX-License-Identifier: MIT */
/* Empty until its module lands. */
