/* SPDX-License-Identifier: MIT */
/*
 * Pipelines of stage processes; see pipeline.h.
 *
 * One reader thread per stage reads the stage's output: frames of stage k
 * are written on to stage k + 1 by reader k, frames of the last stage are
 * queued for the client.  The calling thread writes only to stage 0.  So
 * every stream has one writer, and since the last reader never blocks on a
 * stage, no cycle of full pipes can form.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "log.h"
#include "net.h"
#include "pipeline.h"
#include "stream.h"

struct stage {
	char *spec;
	char label[160];          /* "stage 1 (stage-01.nsa)" */
	pid_t pid;                /* 0 for TCP */
	int to_fd, from_fd;       /* the same socket for TCP */
	struct nesa_stream *to, *from;
	pthread_t reader;
	bool reader_started;
	/* From the hello answer. */
	int first, count, n_blocks, max_pos;
	char model_id[17];
	int in_dtype, in_ndim, out_ndim;
	int64_t in_shape[3], in_elems, out_elems;
	/* Send times of batches in flight (ring), for the per-stage times of -v. */
	double sent[64];
	int sent_head, in_flight;
	double busy;              /* seconds from a batch's last frame in to its last frame out */
	uint64_t batches;
};

/* A frame of the last stage's output, waiting for collect. */
struct result {
	struct nesa_frame f;      /* payload points to data */
	void *data;
};

struct pipe {
	int n;
	bool chain;               /* stages piped to each other, not relayed */
	struct stage *st;
	const struct nesa_pipe_opts *o;
	int timeout_ms;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct result *q;         /* (cap) ring of results */
	int q_head, q_len, q_cap;
	int complete;             /* whole batches queued */
	enum nesa_status failed;
	char fail_msg[NESA_ERR_MSG_MAX];
	bool closing;
	float *out;               /* (out_cap) floats: the collected batch */
	size_t out_cap;
	void *in_buf;             /* encoding scratch for submit */
	double t_start;
};

static void
fail(struct pipe *p, enum nesa_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Records the first failure and wakes the client. */
static void
fail(struct pipe *p, enum nesa_status s, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&p->mu);
	if (p->failed == NESA_OK) {
		p->failed = s;
		va_start(ap, fmt);
		vsnprintf(p->fail_msg, sizeof p->fail_msg, fmt, ap);
		va_end(ap);
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* "exited with status 3" when the stage's process is gone (reaping it), else "". */
static const char *
ended(struct stage *st, char *buf, size_t size)
{
	int status;

	buf[0] = '\0';
	if (st->pid > 0 && waitpid(st->pid, &status, WNOHANG) == st->pid) {
		if (WIFEXITED(status))
			snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
		else if (WIFSIGNALED(status))
			snprintf(buf, size, "was killed by signal %d", WTERMSIG(status));
		st->pid = -1;
	}
	return buf;
}

/* " (its process exited with status 3)" when the stage's process is gone. */
static const char *
exit_note(struct stage *st, char *buf, size_t size)
{
	char how[64];

	buf[0] = '\0';
	if (ended(st, how, sizeof how)[0] != '\0')
		snprintf(buf, size, " (its process %s)", how);
	return buf;
}

static const char *gone_note(struct pipe *p, struct stage *st, char *note, size_t size);

static void
stamp(struct stage *st, bool in)
{
	if (in) {
		if (st->in_flight < 64)
			st->sent[(st->sent_head + st->in_flight) % 64] = nesa_now();
		st->in_flight++;
	} else if (st->in_flight > 0) {
		st->busy += nesa_now() - st->sent[st->sent_head];
		st->sent_head = (st->sent_head + 1) % 64;
		st->in_flight--;
		st->batches++;
	}
}

static bool
queue_result(struct pipe *p, const struct nesa_frame *f)
{
	struct result *r;

	if (p->q_len == p->q_cap) {
		int ncap = p->q_cap ? 2 * p->q_cap : 64, i;
		struct result *nq = nesa_malloc((size_t)ncap * sizeof *nq);

		if (nq == NULL)
			return false;
		for (i = 0; i < p->q_len; i++)
			nq[i] = p->q[(p->q_head + i) % p->q_cap];
		nesa_free(p->q);
		p->q = nq;
		p->q_head = 0;
		p->q_cap = ncap;
	}
	r = &p->q[(p->q_head + p->q_len) % p->q_cap];
	r->f = *f;
	r->data = nesa_aligned_alloc(f->payload_len);
	if (r->data == NULL)
		return false;
	memcpy(r->data, f->payload, f->payload_len);
	r->f.payload = r->data;
	p->q_len++;
	return true;
}

struct reader_arg {
	struct pipe *p;
	int k;
};

static void *
reader_main(void *arg)
{
	struct pipe *p = ((struct reader_arg *)arg)->p;
	const int k = ((struct reader_arg *)arg)->k;
	struct stage *st = &p->st[k], *next = k + 1 < p->n && !p->chain ? &p->st[k + 1] : NULL;
	/* A chain is timed end to end, on its first stage. */
	struct stage *timed = p->chain ? &p->st[0] : st;
	struct nesa_frame f;
	char note[512];

	nesa_free(arg);
	for (;;) {
		enum nesa_status s = nesa_stream_read(st->from, &f);

		if (s == NESA_ETIMEOUT) {
			bool idle;

			pthread_mutex_lock(&p->mu);
			idle = timed->in_flight == 0 && !p->closing;
			pthread_mutex_unlock(&p->mu);
			if (idle)
				continue;
			fail(p, NESA_ETIMEOUT, "%s did not answer within %d s", st->label, p->timeout_ms / 1000);
			break;
		}
		if (s != NESA_OK) {
			/* A short pause lets a dying process be reaped for the message. */
			usleep(20000);
			fail(p, NESA_EREMOTE, "%s: %s%s", st->label, nesa_stream_error(st->from),
			     gone_note(p, st, note, sizeof note));
			break;
		}
		if (f.kind == NESA_FRAME_ERROR) {
			enum nesa_status es;
			char who[256], msg[NESA_FRAME_MESSAGE_MAX + 1];
			struct nesa_err e;

			if (nesa_frame_error_parse(&f, &es, who, sizeof who, msg, sizeof msg, &e) != NESA_OK)
				fail(p, NESA_EREMOTE, "%s: %s", st->label, e.msg);
			else
				fail(p, NESA_EREMOTE, "%s: stage '%s' failed: %s", st->label, who, msg);
			break;
		}
		if (f.kind == NESA_FRAME_EOS) {
			bool closing;

			pthread_mutex_lock(&p->mu);
			closing = p->closing;
			pthread_mutex_unlock(&p->mu);
			if (!closing) {
				usleep(20000);
				fail(p, NESA_EREMOTE, "%s ended its stream unexpectedly%s", st->label,
				     gone_note(p, st, note, sizeof note));
			}
			else if (next != NULL)
				nesa_stream_write(next->to, &f);
			break;
		}
		pthread_mutex_lock(&p->mu);
		if (f.kind == NESA_FRAME_TENSOR && (f.flags & NESA_FRAME_FLAG_LAST)) {
			stamp(timed, false);
			if (next != NULL)
				stamp(next, true);
		}
		if (next == NULL && f.kind == NESA_FRAME_TENSOR) {
			if (!queue_result(p, &f)) {
				pthread_mutex_unlock(&p->mu);
				fail(p, NESA_ENOMEM, "out of memory");
				break;
			}
			if (f.flags & NESA_FRAME_FLAG_LAST) {
				p->complete++;
				pthread_cond_broadcast(&p->cv);
			}
		}
		pthread_mutex_unlock(&p->mu);
		if (next != NULL && nesa_stream_write(next->to, &f) != NESA_OK) {
			usleep(20000);
			fail(p, NESA_EREMOTE, "%s: %s%s", next->label, nesa_stream_error(next->to),
			     exit_note(next, note, sizeof note));
			break;
		}
	}
	return NULL;
}

/* The nesa-run-shard beside this program, or the one on PATH. */
static const char *
run_shard_path(char *buf, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", buf, size - 32);

	if (n > 0) {
		char *slash;

		buf[n] = '\0';
		slash = strrchr(buf, '/');
		if (slash != NULL) {
			strcpy(slash + 1, "nesa-run-shard");
			if (access(buf, X_OK) == 0)
				return buf;
		}
	}
	return "nesa-run-shard";
}

static bool
is_file(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/*
 * Starts the stage: connects, or forks the archive's server or the command.
 * In a chain, *carry is the read end of the previous stage's output (-1 for
 * the first stage), which becomes this stage's input, and receives this
 * stage's output read end unless it is the last stage.
 */
static enum nesa_status
start(struct pipe *p, struct stage *st, int k, int *carry, struct nesa_err *err)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1};
	char exe[PATH_MAX], tbuf[16];
	const char *base = strrchr(st->spec, '/');
	const bool fed = p->chain && k > 0, feeds = p->chain && k < p->n - 1;

	snprintf(st->label, sizeof st->label, "stage %d (%.140s)", k,
	         is_file(st->spec) && base != NULL ? base + 1 : st->spec);
	st->to_fd = st->from_fd = -1;
	if (strncmp(st->spec, "tcp://", 6) == 0) {
		enum nesa_status s = nesa_net_connect(st->spec, p->timeout_ms, &st->to_fd, err);

		if (s != NESA_OK)
			return nesa_err_prefix(err, "%s", st->label);
		st->from_fd = st->to_fd;
		return NESA_OK;
	}
	if (fed)
		in[0] = *carry;
	if ((!fed && pipe2(in, O_CLOEXEC) != 0) || pipe2(out, O_CLOEXEC) != 0) {
		enum nesa_status s = nesa_err_sys(err, NESA_EIO, "%s: cannot create a pipe", st->label);

		close(in[0]);
		close(in[1]);
		if (fed)
			*carry = -1;
		return s;
	}
	if (is_file(st->spec))
		run_shard_path(exe, sizeof exe);
	snprintf(tbuf, sizeof tbuf, "%d", p->o->threads);
	st->pid = fork();
	if (st->pid < 0) {
		enum nesa_status s = nesa_err_sys(err, NESA_EIO, "%s: cannot start a process", st->label);

		close(in[0]), close(in[1]), close(out[0]), close(out[1]);
		if (fed)
			*carry = -1;
		return s;
	}
	if (st->pid == 0) {
		/* The child: the stage's stdin and stdout are our pipes. */
		const char *argv[12];
		int a = 0;

		signal(SIGPIPE, SIG_DFL);
		dup2(in[0], STDIN_FILENO);
		dup2(out[1], STDOUT_FILENO);
		if (is_file(st->spec)) {
			argv[a++] = exe;
			if (p->o->threads > 0) {
				argv[a++] = "-t";
				argv[a++] = tbuf;
			}
			if (p->o->codec != NULL) {
				argv[a++] = "--codec";
				argv[a++] = p->o->codec;
			}
			argv[a++] = st->spec;
			argv[a] = NULL;
			execvp(exe, (char *const *)argv);
		} else {
			execl("/bin/sh", "sh", "-c", st->spec, (char *)NULL);
		}
		fprintf(stderr, "%s: cannot run '%s': %s\n", nesa_log_progname(), st->spec, strerror(errno));
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	st->to_fd = in[1];
	if (fed)
		*carry = -1;
	if (feeds)
		*carry = out[0];
	else
		st->from_fd = out[0];
	return NESA_OK;
}

static int64_t
shape_of(json_t *o, int *dtype, int *ndim, int64_t shape[3])
{
	json_t *a = json_object_get(o, "shape");
	const char *dt = json_string_value(json_object_get(o, "dtype"));
	int64_t n = 1;
	size_t i;

	*dtype = dt != NULL && strcmp(dt, "i32") == 0 ? NESA_I32 : NESA_F32;
	*ndim = json_is_array(a) && json_array_size(a) <= 3 ? (int)json_array_size(a) : -1;
	for (i = 0; *ndim >= 0 && i < (size_t)*ndim; i++) {
		shape[i] = json_integer_value(json_array_get(a, i));
		if (shape[i] < 1)
			return -1;
		n *= shape[i];
	}
	return *ndim >= 0 ? n : -1;
}

/* Reads a stage's description from a hello answer f. */
static enum nesa_status
parse_hello(struct stage *st, const struct nesa_frame *f, struct nesa_err *err)
{
	json_error_t je;
	json_t *h;
	int64_t osh[3];
	int dt;

	if (f->kind == NESA_FRAME_ERROR) {
		char who[256], msg[NESA_FRAME_MESSAGE_MAX + 1];
		enum nesa_status es;

		nesa_frame_error_parse(f, &es, who, sizeof who, msg, sizeof msg, NULL);
		return nesa_err_set(err, NESA_EREMOTE, "%s: stage '%s' failed: %s", st->label, who, msg);
	}
	if (f->kind != NESA_FRAME_BEGIN || f->session != 0 ||
	    (h = json_loadb(f->payload, f->payload_len, 0, &je)) == NULL)
		return nesa_err_set(err, NESA_EREMOTE, "%s: no hello answer (is it a nesa-run-shard?)", st->label);
	st->first = (int)json_integer_value(json_object_get(h, "first"));
	st->count = (int)json_integer_value(json_object_get(h, "count"));
	st->n_blocks = (int)json_integer_value(json_object_get(h, "n_blocks"));
	st->max_pos = (int)json_integer_value(json_object_get(h, "max_positions"));
	snprintf(st->model_id, sizeof st->model_id, "%s",
	         json_string_value(json_object_get(h, "model_id")) != NULL
	             ? json_string_value(json_object_get(h, "model_id")) : "");
	st->in_elems = shape_of(json_object_get(h, "in"), &st->in_dtype, &st->in_ndim, st->in_shape);
	st->out_elems = shape_of(json_object_get(h, "out"), &dt, &st->out_ndim, osh);
	json_decref(h);
	if (st->count < 1 || st->n_blocks < 1 || st->in_elems < 1 || st->out_elems < 1)
		return nesa_err_set(err, NESA_EREMOTE, "%s: malformed hello answer", st->label);
	return NESA_OK;
}

/*
 * What to say about st's failure: its own exit; in a chain, where the
 * client sees only the end, every stage whose process is gone, in order
 * ("; the chain broke: stage 1 (x) exited with status 3").  Which one
 * broke it first is for the reader: upstream stages usually fail writing
 * to it, downstream ones see their input end.
 */
static const char *
gone_note(struct pipe *p, struct stage *st, char *note, size_t size)
{
	char how[64];
	size_t n = 0;
	int k;

	if (!p->chain)
		return exit_note(st, note, size);
	note[0] = '\0';
	for (k = 0; k < p->n && n < size; k++) {
		if (ended(&p->st[k], how, sizeof how)[0] == '\0')
			continue;
		n += (size_t)snprintf(note + n, size - n, "%s%s %s", n == 0 ? "; the chain broke: " : ", ",
		                      p->st[k].label, how);
	}
	return note;
}

/*
 * Sends a hello and reads the stage's description; in a chain, one request
 * to the first stage and every answer from the last (see nesa-stream(5)).
 */
static enum nesa_status
hello(struct pipe *p, struct stage *st, struct nesa_err *err)
{
	static const char chain_req[] = "{\"chain\": true}";
	struct stage *from = p->chain ? &p->st[p->n - 1] : st;
	struct nesa_frame f;
	char note[512];
	int k;
	enum nesa_status s;

	nesa_frame_init(&f, NESA_FRAME_BEGIN);
	if (p->chain) {
		f.payload = chain_req;
		f.payload_len = sizeof chain_req - 1;
	}
	if (nesa_stream_write(st->to, &f) != NESA_OK || nesa_stream_flush(st->to) != NESA_OK) {
		usleep(50000);
		return nesa_err_set(err, NESA_EREMOTE, "%s: %s%s", st->label, nesa_stream_error(st->to),
		                    exit_note(st, note, sizeof note));
	}
	/* A chain answers with the request, then the stages from the last back. */
	for (k = p->chain ? p->n : 0; k >= 0; k--) {
		struct stage *who = !p->chain ? st : k < p->n ? &p->st[k] : from;

		s = nesa_stream_read(from->from, &f);
		if (s != NESA_OK) {
			usleep(50000);
			return nesa_err_set(err, s == NESA_ETIMEOUT ? NESA_ETIMEOUT : NESA_EREMOTE, "%s: %s%s",
			                    from->label, nesa_stream_error(from->from), gone_note(p, from, note, sizeof note));
		}
		if (f.kind == NESA_FRAME_EOS) {
			usleep(50000);
			return nesa_err_set(err, NESA_EREMOTE, "%s ended its stream before answering the hello%s",
			                    from->label, gone_note(p, from, note, sizeof note));
		}
		if (p->chain && k == p->n && f.kind != NESA_FRAME_ERROR) {
			if (f.kind != NESA_FRAME_BEGIN || f.session != 0 || f.payload_len != sizeof chain_req - 1 ||
			    memcmp(f.payload, chain_req, f.payload_len) != 0)
				return nesa_err_set(err, NESA_EREMOTE,
				                    "%s: the hello request did not come through the chain (is every stage a nesa-run-shard?)",
				                    from->label);
			continue;
		}
		if ((s = parse_hello(who, &f, err)) != NESA_OK)
			return s;
	}
	return NESA_OK;
}

/* The chain must run the model's blocks in order, from 0 to the end. */
static enum nesa_status
check_chain(struct pipe *p, struct nesa_err *err)
{
	int k;

	for (k = 0; k < p->n; k++) {
		struct stage *st = &p->st[k], *prev = k > 0 ? &p->st[k - 1] : NULL;
		int want = prev != NULL ? prev->first + prev->count : 0;

		if (prev != NULL && strcmp(st->model_id, prev->model_id) != 0)
			return nesa_err_set(err, NESA_EREMOTE, "%s serves model %s but %s serves model %s",
			                    st->label, st->model_id, prev->label, prev->model_id);
		if (st->first != want || st->n_blocks != p->st[0].n_blocks)
			return nesa_err_set(err, NESA_EREMOTE,
			                    "%s holds blocks [%d, %d) of %d, but the chain needs block %d next",
			                    st->label, st->first, st->first + st->count, st->n_blocks, want);
		if (prev != NULL && prev->out_elems != st->in_elems)
			return nesa_err_set(err, NESA_EREMOTE, "%s sends rows of %lld values but %s takes %lld",
			                    prev->label, (long long)prev->out_elems, st->label,
			                    (long long)st->in_elems);
	}
	if (p->st[p->n - 1].first + p->st[p->n - 1].count != p->st[0].n_blocks)
		return nesa_err_set(err, NESA_EREMOTE, "the chain ends at block %d of %d: a last stage is missing",
		                    p->st[p->n - 1].first + p->st[p->n - 1].count, p->st[0].n_blocks);
	return NESA_OK;
}

/*
 * Stops every stage and reader and empties the queues, keeping the specs:
 * the end of a chain, or the first half of a restart.
 */
static void
pipe_stop(struct pipe *p)
{
	struct nesa_frame f;
	double t0;
	int k, status;
	bool clean;

	pthread_mutex_lock(&p->mu);
	p->closing = true;
	clean = p->failed == NESA_OK;
	pthread_mutex_unlock(&p->mu);
	/*
	 * A clean end: end of stream travels down the chain through the readers
	 * and every stage exits.  After a failure, stop the stages instead:
	 * their ends of the pipes close and every reader wakes up.
	 */
	if (clean && p->n > 0 && p->st[0].to != NULL) {
		nesa_frame_init(&f, NESA_FRAME_EOS);
		clean = nesa_stream_write(p->st[0].to, &f) == NESA_OK;
	}
	for (k = 0; k < p->n && !clean; k++) {
		struct stage *st = &p->st[k];

		if (st->pid > 0)
			kill(st->pid, SIGTERM);
		else if (st->to_fd >= 0)
			shutdown(st->to_fd, SHUT_RDWR);
	}
	for (k = 0; k < p->n; k++)
		if (p->st[k].reader_started)
			pthread_join(p->st[k].reader, NULL);
	for (k = 0; k < p->n; k++) {
		struct stage *st = &p->st[k];
		char *spec = st->spec;

		nesa_stream_free(st->to);
		nesa_stream_free(st->from);
		if (st->to_fd >= 0)
			close(st->to_fd);
		if (st->from_fd >= 0 && st->from_fd != st->to_fd)
			close(st->from_fd);
		/* Reap; a stage that does not stop within 5 s is killed. */
		t0 = nesa_now();
		while (st->pid > 0 && waitpid(st->pid, &status, WNOHANG) == 0) {
			if (nesa_now() - t0 > 5) {
				kill(st->pid, SIGKILL);
				waitpid(st->pid, &status, 0);
				break;
			}
			usleep(10000);
		}
		memset(st, 0, sizeof *st);
		st->spec = spec;
		st->to_fd = st->from_fd = -1;
	}
	while (p->q_len > 0) {
		nesa_aligned_free(p->q[p->q_head].data);
		p->q_head = (p->q_head + 1) % p->q_cap;
		p->q_len--;
	}
	p->q_head = 0;
	p->complete = 0;
}

static void
pipe_free(void *impl)
{
	struct pipe *p = impl;
	int k;

	pipe_stop(p);
	for (k = 0; k < p->n; k++)
		nesa_free(p->st[k].spec);
	nesa_free(p->q);
	nesa_free(p->st);
	nesa_aligned_free(p->out);
	nesa_free(p->in_buf);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	nesa_free(p);
}

static enum nesa_status
failure(struct pipe *p, struct nesa_err *err)
{
	return nesa_err_set(err, p->failed, "%s", p->fail_msg);
}

static enum nesa_status
pipe_submit(void *impl, const struct nesa_seg *segs, int n_segs, const void *in, struct nesa_err *err)
{
	struct pipe *p = impl;
	struct stage *s0 = &p->st[0];
	const size_t esz = s0->in_dtype == NESA_I32 ? sizeof(int32_t) : sizeof(float);
	int64_t row = 0;
	int i, k;

	if (p->failed != NESA_OK)
		return failure(p, err);
	pthread_mutex_lock(&p->mu);
	stamp(s0, true);
	pthread_mutex_unlock(&p->mu);
	for (i = 0; i < n_segs; i++) {
		struct nesa_frame f;

		nesa_frame_init(&f, NESA_FRAME_TENSOR);
		f.session = segs[i].session;
		f.position = segs[i].pos;
		f.block = 0;
		f.codec = (uint8_t)s0->in_dtype;
		f.flags = (uint8_t)((segs[i].last_only ? NESA_FRAME_FLAG_LASTROW : 0) |
		                    (i == n_segs - 1 ? NESA_FRAME_FLAG_LAST : 0));
		f.ndim = s0->in_ndim + 1;
		f.shape[0] = segs[i].rows;
		for (k = 0; k < s0->in_ndim; k++)
			f.shape[k + 1] = s0->in_shape[k];
		f.payload = (const char *)in + (size_t)row * (size_t)s0->in_elems * esz;
		f.payload_len = (size_t)segs[i].rows * (size_t)s0->in_elems * esz;
		if (nesa_stream_write(s0->to, &f) != NESA_OK) {
			char note[96];

			usleep(20000);
			fail(p, NESA_EREMOTE, "%s: %s%s", s0->label, nesa_stream_error(s0->to),
			     exit_note(s0, note, sizeof note));
			return failure(p, err);
		}
		row += segs[i].rows;
	}
	return NESA_OK;
}

static enum nesa_status
pipe_collect(void *impl, const float **out, int64_t *out_rows, struct nesa_err *err)
{
	struct pipe *p = impl;
	const int64_t oe = p->st[p->n - 1].out_elems;
	int64_t rows = 0;
	enum nesa_status s = NESA_OK;

	pthread_mutex_lock(&p->mu);
	while (p->complete == 0 && p->failed == NESA_OK)
		pthread_cond_wait(&p->cv, &p->mu);
	if (p->failed != NESA_OK) {
		pthread_mutex_unlock(&p->mu);
		return failure(p, err);
	}
	for (;;) {
		struct result *r = &p->q[p->q_head];
		int64_t fr = r->f.shape[0];
		bool last = (r->f.flags & NESA_FRAME_FLAG_LAST) != 0;
		size_t need = (size_t)((rows + fr) * oe);

		if (need > p->out_cap) {
			size_t cap = need * 2;
			float *o = nesa_aligned_alloc(cap * sizeof *o);

			if (o == NULL) {
				s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
				break;
			}
			if (rows > 0)
				memcpy(o, p->out, (size_t)(rows * oe) * sizeof *o);
			nesa_aligned_free(p->out);
			p->out = o;
			p->out_cap = cap;
		}
		if (r->f.ndim < 1 || nesa_frame_decode_f32(&r->f, p->out + rows * oe, (size_t)(fr * oe), err) != NESA_OK) {
			s = err->status != NESA_OK ? err->status : NESA_EREMOTE;
			nesa_err_prefix(err, "%s", p->st[p->n - 1].label);
			break;
		}
		rows += fr;
		nesa_aligned_free(r->data);
		p->q_head = (p->q_head + 1) % p->q_cap;
		p->q_len--;
		if (last)
			break;
	}
	p->complete--;
	pthread_mutex_unlock(&p->mu);
	*out = p->out;
	*out_rows = rows;
	return s;
}

static enum nesa_status
pipe_run(void *impl, const struct nesa_seg *segs, int n_segs, const void *in, const float **out,
         int64_t *out_rows, struct nesa_err *err)
{
	enum nesa_status s = pipe_submit(impl, segs, n_segs, in, err);

	return s != NESA_OK ? s : pipe_collect(impl, out, out_rows, err);
}

static void
pipe_end(void *impl, uint64_t session)
{
	struct pipe *p = impl;
	struct nesa_frame f;

	/* The end frame travels through every stage, each freeing the session. */
	if (p->failed != NESA_OK)
		return;
	nesa_frame_init(&f, NESA_FRAME_END);
	f.session = session;
	nesa_stream_write(p->st[0].to, &f);
}

static void
pipe_report(void *impl)
{
	struct pipe *p = impl;
	const double wall = nesa_now() - p->t_start;
	double framing = 0;
	int k;

	for (k = 0; k < p->n; k++) {
		const struct stage *st = &p->st[k];
		const struct stage *end = p->chain ? &p->st[p->n - 1] : st;
		const struct nesa_stream_stats *to = nesa_stream_stats(p->st[p->chain ? 0 : k].to);
		const struct nesa_stream_stats *from = nesa_stream_stats(end->from);

		framing += to->codec_seconds + from->codec_seconds;
		if (p->chain) {
			/* The client sees the chain's ends only. */
			nesa_log(NESA_LOG_INFO,
			         "chain of %d stages: blocks [0, %d), %llu batches, %.3f ms per batch through the chain, %llu bytes in, %llu bytes out",
			         p->n, end->first + end->count, (unsigned long long)st->batches,
			         st->batches > 0 ? 1e3 * st->busy / (double)st->batches : 0.0,
			         (unsigned long long)(to->payload_bytes + to->header_bytes),
			         (unsigned long long)(from->payload_bytes + from->header_bytes));
			break;
		}
		nesa_log(NESA_LOG_INFO,
		         "%s: blocks [%d, %d), %llu batches, %.3f ms per batch in the stage and its two hops, %llu bytes in, %llu bytes out",
		         st->label, st->first, st->first + st->count, (unsigned long long)st->batches,
		         st->batches > 0 ? 1e3 * st->busy / (double)st->batches : 0.0,
		         (unsigned long long)(to->payload_bytes + to->header_bytes),
		         (unsigned long long)(from->payload_bytes + from->header_bytes));
	}
	nesa_log(NESA_LOG_INFO, "framing (headers and checksums) took %.2f%% of the client's %.3f s",
	         wall > 0 ? 100.0 * framing / wall : 0.0, wall);
}

/* Starts every stage, checks the chain and starts the readers. */
static enum nesa_status
pipe_start(struct pipe *p, struct nesa_err *err)
{
	enum nesa_status s = NESA_OK;
	int k, carry = -1;

	p->failed = NESA_OK;
	p->closing = false;
	/* Start every stage first, so remote ones load in parallel. */
	for (k = 0; k < p->n && s == NESA_OK; k++) {
		struct stage *st = &p->st[k];

		s = start(p, st, k, &carry, err);
		if (s == NESA_OK && st->to_fd >= 0)
			s = nesa_stream_open_fd(st->to_fd, NESA_STREAM_WRITE, st->label, &st->to, err);
		if (s == NESA_OK && st->from_fd >= 0) {
			s = nesa_stream_open_fd(st->from_fd, NESA_STREAM_READ, st->label, &st->from, err);
			if (s == NESA_OK)
				nesa_stream_set_timeout(st->from, p->timeout_ms);
		}
	}
	if (carry >= 0)
		close(carry); /* a stage after it failed to start */
	for (k = 0; k < (p->chain ? 1 : p->n) && s == NESA_OK; k++)
		s = hello(p, &p->st[k], err);
	if (s == NESA_OK)
		s = check_chain(p, err);
	/* A chain's stages feed each other: only its end is read here. */
	for (k = p->chain ? p->n - 1 : 0; k < p->n && s == NESA_OK; k++) {
		struct reader_arg *a = nesa_malloc(sizeof *a);

		if (a == NULL) {
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
			break;
		}
		a->p = p;
		a->k = k;
		if (pthread_create(&p->st[k].reader, NULL, reader_main, a) != 0) {
			nesa_free(a);
			s = nesa_err_set(err, NESA_EIO, "cannot start a thread");
			break;
		}
		p->st[k].reader_started = true;
	}
	if (s != NESA_OK) {
		p->failed = s;
		pipe_stop(p);
		if (s != NESA_ENOMEM && s != NESA_ETIMEOUT && s != NESA_EINVAL)
			s = NESA_EREMOTE;
		if (err != NULL)
			err->status = s;
	}
	return s;
}

/*
 * Stops what is left of the chain and starts every stage again.  Every
 * session's state is gone: the caller replays what it had sent.
 */
static enum nesa_status
pipe_restart(void *impl, struct nesa_err *err)
{
	struct pipe *p = impl;

	if (p->failed == NESA_OK)
		p->failed = NESA_EREMOTE; /* stop, do not drain */
	pipe_stop(p);
	return pipe_start(p, err);
}

static const struct nesa_chain_ops pipe_ops = {pipe_run,     pipe_end,    pipe_free,  pipe_submit,
                                               pipe_collect, pipe_report, pipe_restart};

enum nesa_status
nesa_chain_pipeline(const char *const *specs, int n, const struct nesa_pipe_opts *o,
                    struct nesa_chain **out, struct nesa_err *err)
{
	static const struct nesa_pipe_opts defaults = {0};
	struct nesa_chain *c;
	struct pipe *p;
	enum nesa_status s = NESA_OK;
	int k;

	*out = NULL;
	if (n < 1)
		return nesa_err_set(err, NESA_EINVAL, "no stage to run");
	c = nesa_calloc(1, sizeof *c);
	p = nesa_calloc(1, sizeof *p);
	if (c == NULL || p == NULL || (p->st = nesa_calloc((size_t)n, sizeof *p->st)) == NULL) {
		nesa_free(c);
		if (p != NULL)
			nesa_free(p);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->n = n;
	p->o = o != NULL ? o : &defaults;
	p->chain = p->o->chain;
	p->timeout_ms = p->o->timeout_ms > 0 ? p->o->timeout_ms : 120000;
	for (k = 0; k < n; k++) {
		p->st[k].to_fd = p->st[k].from_fd = -1;
		p->st[k].spec = nesa_strdup(specs[k]);
		if (p->st[k].spec == NULL)
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		else if (p->chain && strncmp(specs[k], "tcp://", 6) == 0 && s == NESA_OK)
			s = nesa_err_set(err, NESA_EINVAL,
			                 "stage %d (%s): a chain needs stage processes; a TCP stage cannot read from the stage before it",
			                 k, specs[k]);
	}
	if (s == NESA_OK)
		s = pipe_start(p, err);
	if (s != NESA_OK) {
		pipe_free(p);
		nesa_free(c);
		return s;
	}
	p->t_start = nesa_now();
	c->ops = &pipe_ops;
	c->impl = p;
	c->in_dtype = p->st[0].in_dtype;
	c->in_ndim = p->st[0].in_ndim;
	memcpy(c->in_shape, p->st[0].in_shape, sizeof c->in_shape);
	c->in_elems = p->st[0].in_elems;
	c->out_elems = p->st[n - 1].out_elems;
	c->max_positions = p->st[0].max_pos;
	*out = c;
	return NESA_OK;
}
