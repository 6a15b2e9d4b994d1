/* SPDX-License-Identifier: MIT */
/*
 * Importers: each turns one source format into a struct nesa_model (graph
 * document + weights + tokenizer).  Called by nesa_model_load(), which
 * detects the format; not meant for the tools directly.
 */
#ifndef NESA_IMPORT_H
#define NESA_IMPORT_H

#include "model.h"

/* GGUF v2/v3, architecture llama; tokenizer from the metadata. */
enum nesa_status nesa_import_gguf(const char *path, struct nesa_model **out, struct nesa_err *err);

/*
 * llama2.c checkpoint (legacy version 0, versions 1 and 2).  tokenizer is
 * a llama2.c tokenizer file; NULL looks for tokenizer.bin, then
 * tok<vocab>.bin, beside the checkpoint.
 */
enum nesa_status nesa_import_llama2c(const char *path, const char *tokenizer,
                                     struct nesa_model **out, struct nesa_err *err);

/* Hugging Face directory (or its config.json): model_type llama or gpt2. */
enum nesa_status nesa_import_hf(const char *path, struct nesa_model **out, struct nesa_err *err);

/*
 * A JSON file: a graph file (nesa-graph(5)) or a Hugging Face config.json.
 * weights, when not NULL, replaces the graph file's "weights".
 */
enum nesa_status nesa_import_json(const char *path, const char *weights, struct nesa_model **out,
                                  struct nesa_err *err);

/* Shared by the importers (model.c). */
struct nesa_model *nesa_model_new(const char *path, const char *format);
enum nesa_status nesa_model_finish(struct nesa_model *m, struct nesa_err *err);

#endif
