/*
 * cellcut.losses._affinity: the soft N-cut's offset loop, compiled.
 *
 * Computes, for one sample, A_k = W p_k and d = W 1 with
 *     w_ij = s(δ) · exp(-((I_i - I_j) / σ_I)²),  δ = x_j - x_i in the ball,
 * and the sums N_k = <p_k, A_k>, D_k = <p_k, d> (float64). This is the same computation as
 * cellcut.losses.ncut.affinity_exact (the PyTorch loop, which stays the reference the tests
 * compare this file against), fused so that each pair costs one exp and a few adds:
 *
 *   - each unordered pair is visited once (lexicographically positive half ball, δz ≥ 0) and
 *     its weight added in both directions;
 *   - for one offset, the pairs of one z-plane form one flat run of indices; pairs whose y or x
 *     would leave the volume are zeroed by a per-offset mask, so the loops are long and
 *     vectorize (no remainder loop per row);
 *   - exp is a short polynomial (relative error ~2e-7, float32 rounding) that the compiler
 *     inlines and vectorizes; arguments are floored at -80 (no denormals);
 *   - threads take z-chunks at least as thick as the ball's z reach, even chunks first, then
 *     odd ones, so no two threads ever write the same voxel; no atomics, no locks.
 *
 * Only float32, C-contiguous, 1- to 3-D volumes (lower dimensions are embedded in 3-D by the
 * caller). The Python wrapper (cellcut.losses.ncut) checks every argument before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define CELLCUT_NO_PTHREAD 1
#else
#include <pthread.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CELLCUT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CELLCUT_CLONES
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CELLCUT_SIMD _Pragma("omp simd")
#else
#define CELLCUT_SIMD
#endif

#define EXP_FLOOR (-80.0f)
#define MAX_THREADS 256
#define STRIP 1024

/* exp(v) for v in [-87, 0]: round v/ln2 to k, polynomial on the remainder, times 2^k. */
static inline float neg_exp(float v)
{
    const float k = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    const float r = (v - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* s · exp(-(a - b)² / σ_I²), its argument floored (no denormals); s is 0 for invalid pairs. */
static inline float pair_weight(float a, float b, float neg_inv_s2, float s)
{
    const float diff = a - b;
    const float v = neg_inv_s2 * diff * diff;
    return s * neg_exp(v > EXP_FLOOR ? v : EXP_FLOOR);
}

typedef struct {
    const float *x; /* image, V values */
    float neg_inv_s2; /* -1 / σ_I² */
    const float *p; /* C channels of V values */
    int channels;
    Py_ssize_t nz, ny, nx;
    const int32_t *offsets; /* (n_off, 3), lexicographically positive */
    const float *weights;   /* spatial factor of each offset */
    int n_off;
    float *a; /* C channels, initialised to p (the zero offset) */
    float *d; /* V values, initialised to 1 */
} problem_t;

/* Add the pairs (i, i + δ) for every i whose z lies in [z0, z1). */
static CELLCUT_CLONES void
accumulate_chunk(const problem_t *pb, Py_ssize_t z0, Py_ssize_t z1, float *restrict wb,
                 float *restrict mask)
{
    const Py_ssize_t nz = pb->nz, ny = pb->ny, nx = pb->nx;
    const Py_ssize_t plane = ny * nx, V = nz * plane;
    const float *restrict x = pb->x;
    float *restrict d = pb->d;
    for (int o = 0; o < pb->n_off; o++) {
        const int dz = pb->offsets[3 * o], dy = pb->offsets[3 * o + 1], dx = pb->offsets[3 * o + 2];
        const float s = pb->weights[o];
        const Py_ssize_t shift = (Py_ssize_t)dy * nx + dx; /* within-plane index step */
        const Py_ssize_t lo = shift < 0 ? -shift : 0, hi = shift > 0 ? plane - shift : plane;
        if (hi <= lo || dz >= nz) continue;
        /* mask[t] = s where voxel t of a plane has its partner inside the plane, else 0 */
        for (Py_ssize_t y = 0; y < ny; y++) {
            const float sy = (y + dy >= 0 && y + dy < ny) ? s : 0.0f;
            float *row = mask + y * nx;
            for (Py_ssize_t i = 0; i < nx; i++) row[i] = (i + dx >= 0 && i + dx < nx) ? sy : 0.0f;
        }
        for (Py_ssize_t z = z0; z < z1; z++) {
            const Py_ssize_t zj = z + dz;
            if (zj >= nz) break;
            /* strips of STRIP pairs keep the weights in L1 between the two passes */
            for (Py_ssize_t t0 = lo; t0 < hi; t0 += STRIP) {
                const Py_ssize_t n = hi - t0 < STRIP ? hi - t0 : STRIP;
                const Py_ssize_t ri = z * plane + t0, rj = zj * plane + t0 + shift;
                const float *restrict xi = x + ri, *restrict xj = x + rj;
                const float *restrict m = mask + t0;
                float *restrict di = d + ri;
                /* pass 1: weights, and everything written at i */
                if (pb->channels == 1) {
                    float *restrict ai = pb->a + ri;
                    const float *restrict pj = pb->p + rj;
                    CELLCUT_SIMD
                    for (Py_ssize_t t = 0; t < n; t++) {
                        const float w = pair_weight(xi[t], xj[t], pb->neg_inv_s2, m[t]);
                        wb[t] = w;
                        di[t] += w;
                        ai[t] += w * pj[t];
                    }
                } else {
                    CELLCUT_SIMD
                    for (Py_ssize_t t = 0; t < n; t++) {
                        const float w = pair_weight(xi[t], xj[t], pb->neg_inv_s2, m[t]);
                        wb[t] = w;
                        di[t] += w;
                    }
                    for (int c = 0; c < pb->channels; c++) {
                        float *restrict ai = pb->a + c * V + ri;
                        const float *restrict pj = pb->p + c * V + rj;
                        CELLCUT_SIMD
                        for (Py_ssize_t t = 0; t < n; t++) ai[t] += wb[t] * pj[t];
                    }
                }
                /* pass 2: everything written at j (for δ = (0, 0, dx) the runs i and j overlap
                   inside one array, hence a separate pass) */
                float *restrict dj = d + rj;
                CELLCUT_SIMD
                for (Py_ssize_t t = 0; t < n; t++) dj[t] += wb[t];
                for (int c = 0; c < pb->channels; c++) {
                    float *restrict aj = pb->a + c * V + rj;
                    const float *restrict pi = pb->p + c * V + ri;
                    CELLCUT_SIMD
                    for (Py_ssize_t t = 0; t < n; t++) aj[t] += wb[t] * pi[t];
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Threads: created once per call; phases separated by a barrier.
 *   1. each thread checks Σ_k p_k = 1 on the z-chunks it owns (chunk m belongs to m mod T);
 *   2. it initialises its chunks (A = p, d = 1: the zero offset);
 *   3. all threads accumulate the even chunks, then 4. the odd ones (chunks are at least as thick
 *      as the ball's z reach, so chunks of one parity never write the same voxel);
 *   5. each thread sums N_k, D_k over its chunks (A_K = d - Σ A_k where the classes sum to
 *      one, formed on the fly: the last channel of assoc is then left unwritten).
 */

typedef struct {
#ifndef CELLCUT_NO_PTHREAD
    pthread_mutex_t lock;
    pthread_cond_t cond;
#endif
    int waiting, generation, open;
} barrier_t;

typedef struct {
    problem_t pb; /* pb.channels is set in phase 1 */
    Py_ssize_t K, chunk, n_chunks;
    float tol;
    int threads;
    barrier_t barrier;
    float worst[MAX_THREADS];
    int failed[MAX_THREADS];
    double *partial; /* (threads, 2K) */
} shared_t;

typedef struct {
    shared_t *sh;
    int id;
} worker_t;

static void barrier_wait(shared_t *sh)
{
#ifndef CELLCUT_NO_PTHREAD
    barrier_t *b = &sh->barrier;
    if (sh->threads == 1) return;
    pthread_mutex_lock(&b->lock);
    const int generation = b->generation;
    if (++b->waiting == sh->threads) {
        b->waiting = 0;
        b->generation++;
        pthread_cond_broadcast(&b->cond);
    } else {
        while (generation == b->generation) pthread_cond_wait(&b->cond, &b->lock);
    }
    pthread_mutex_unlock(&b->lock);
#else
    (void)sh;
#endif
}

static void chunk_range(const shared_t *sh, Py_ssize_t m, Py_ssize_t *z0, Py_ssize_t *z1)
{
    *z0 = m * sh->chunk;
    *z1 = *z0 + sh->chunk < sh->pb.nz ? *z0 + sh->chunk : sh->pb.nz;
}

static void work(shared_t *sh, int id)
{
    problem_t *pb = &sh->pb;
    const Py_ssize_t K = sh->K, plane = pb->ny * pb->nx, V = pb->nz * plane;
    const int T = sh->threads;
    float *wb = malloc(sizeof(float) * STRIP);
    float *mask = malloc(sizeof(float) * (size_t)plane);
    const int ok = wb != NULL && mask != NULL;
    sh->failed[id] = !ok;
    Py_ssize_t z0, z1;

    /* 1. largest |Σ_k p_k - 1| over the owned chunks */
    float worst = 0.0f;
    for (Py_ssize_t m = id; m < sh->n_chunks; m += T) {
        chunk_range(sh, m, &z0, &z1);
        const Py_ssize_t v0 = z0 * plane, v1 = z1 * plane;
        const float *p0 = pb->p, *p1 = pb->p + V;
        if (K == 2) {
#if defined(__GNUC__) || defined(__clang__)
#pragma omp simd reduction(max : worst)
#endif
            for (Py_ssize_t v = v0; v < v1; v++) {
                const float total = p0[v] + p1[v];
                const float dev = total > 1.0f ? total - 1.0f : 1.0f - total;
                worst = dev > worst ? dev : worst;
            }
        } else {
            for (Py_ssize_t v = v0; v < v1; v++) {
                float total = 0.0f;
                for (Py_ssize_t c = 0; c < K; c++) total += pb->p[c * V + v];
                const float dev = total > 1.0f ? total - 1.0f : 1.0f - total;
                worst = dev > worst ? dev : worst;
            }
        }
    }
    sh->worst[id] = worst;
    barrier_wait(sh);
    worst = 0.0f;
    for (int t = 0; t < T; t++) worst = sh->worst[t] > worst ? sh->worst[t] : worst;
    const int complete = worst <= sh->tol; /* NaN was rejected by the caller */
    const Py_ssize_t C = complete ? K - 1 : K;

    /* 2. the zero offset */
    for (Py_ssize_t m = id; m < sh->n_chunks; m += T) {
        chunk_range(sh, m, &z0, &z1);
        const Py_ssize_t v0 = z0 * plane, n = (z1 - z0) * plane;
        for (Py_ssize_t v = v0; v < v0 + n; v++) pb->d[v] = 1.0f;
        for (Py_ssize_t c = 0; c < C; c++)
            memcpy(pb->a + c * V + v0, pb->p + c * V + v0, sizeof(float) * (size_t)n);
    }
    if (id == 0) pb->channels = (int)C;
    barrier_wait(sh);

    /* 3, 4. the pairs */
    for (int parity = 0; parity < 2; parity++) {
        if (ok) {
            for (Py_ssize_t m = 2 * (Py_ssize_t)id + parity; m < sh->n_chunks; m += 2 * T) {
                chunk_range(sh, m, &z0, &z1);
                accumulate_chunk(pb, z0, z1, wb, mask);
            }
        }
        barrier_wait(sh);
    }

    /* 5. the sums; the last class's association, d - Σ_{k<K} A_k, is formed on the fly */
    double *sums = sh->partial + id * 2 * K;
    for (Py_ssize_t c = 0; c < 2 * K; c++) sums[c] = 0.0;
    for (Py_ssize_t m = id; m < sh->n_chunks; m += T) {
        chunk_range(sh, m, &z0, &z1);
        const Py_ssize_t v0 = z0 * plane, v1 = z1 * plane;
        const float *d = pb->d;
        for (Py_ssize_t c = 0; c < K; c++) {
            const float *pc = pb->p + c * V, *ac = pb->a + c * V;
            double num = 0.0, den = 0.0;
            if (c < C) {
#if defined(__GNUC__) || defined(__clang__)
#pragma omp simd reduction(+ : num, den)
#endif
                for (Py_ssize_t v = v0; v < v1; v++) {
                    num += (double)pc[v] * ac[v];
                    den += (double)pc[v] * d[v];
                }
            } else {
                for (Py_ssize_t v = v0; v < v1; v++) {
                    float last = d[v];
                    for (Py_ssize_t k = 0; k < C; k++) last -= pb->a[k * V + v];
                    num += (double)pc[v] * last;
                    den += (double)pc[v] * d[v];
                }
            }
            sums[c] += num;
            sums[K + c] += den;
        }
    }
    sh->worst[id] = (float)complete; /* reused to report the decision */
    free(wb);
    free(mask);
}

#ifndef CELLCUT_NO_PTHREAD
static void *run_worker(void *arg)
{
    worker_t *w = arg;
    barrier_t *b = &w->sh->barrier;
    pthread_mutex_lock(&b->lock); /* wait until the caller knows how many threads started */
    while (!b->open) pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
    work(w->sh, w->id);
    return NULL;
}
#endif

/* Fills sh->pb.a, sh->pb.d and out (2K sums); returns complete (0/1), or -1 out of memory. */
static int compute(shared_t *sh, int threads, double *out)
{
    int reach = 0;
    for (int o = 0; o < sh->pb.n_off; o++)
        if (sh->pb.offsets[3 * o] > reach) reach = sh->pb.offsets[3 * o];
#ifdef CELLCUT_NO_PTHREAD
    threads = 1;
#endif
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    const Py_ssize_t nz = sh->pb.nz;
    Py_ssize_t chunk = (nz + 2 * threads - 1) / (2 * threads);
    if (chunk < reach) chunk = reach;
    if (chunk < 1) chunk = 1;
    sh->chunk = chunk;
    sh->n_chunks = (nz + chunk - 1) / chunk;
    if (threads > (sh->n_chunks + 1) / 2) threads = (int)((sh->n_chunks + 1) / 2);
    if (threads < 1) threads = 1;
    sh->partial = malloc(sizeof(double) * (size_t)(threads * 2 * sh->K));
    if (sh->partial == NULL) return -1;
    sh->barrier.waiting = sh->barrier.generation = sh->barrier.open = 0;
#ifndef CELLCUT_NO_PTHREAD
    pthread_mutex_init(&sh->barrier.lock, NULL);
    pthread_cond_init(&sh->barrier.cond, NULL);
    pthread_t ids[MAX_THREADS];
    worker_t workers[MAX_THREADS];
    int started = 1;
    for (int t = 1; t < threads; t++) {
        workers[t] = (worker_t){sh, t};
        if (pthread_create(&ids[t], NULL, run_worker, &workers[t]) != 0) break;
        started++;
    }
    pthread_mutex_lock(&sh->barrier.lock);
    sh->threads = started;
    sh->barrier.open = 1;
    pthread_cond_broadcast(&sh->barrier.cond);
    pthread_mutex_unlock(&sh->barrier.lock);
    work(sh, 0);
    for (int t = 1; t < started; t++) pthread_join(ids[t], NULL);
    pthread_cond_destroy(&sh->barrier.cond);
    pthread_mutex_destroy(&sh->barrier.lock);
#else
    sh->threads = 1;
    work(sh, 0);
#endif
    int failed = 0;
    for (Py_ssize_t c = 0; c < 2 * sh->K; c++) out[c] = 0.0;
    for (int t = 0; t < sh->threads; t++) {
        failed |= sh->failed[t];
        for (Py_ssize_t c = 0; c < 2 * sh->K; c++) out[c] += sh->partial[t * 2 * sh->K + c];
    }
    free(sh->partial);
    return failed ? -1 : (int)sh->worst[0];
}

static int check_buffer(Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t count, const char *name)
{
    if (b->len != itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, itemsize * count,
                     b->len);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(ncut_terms_doc,
             "ncut_terms(image, probs, assoc, degree, sums, shape, offsets, weights, "
             "inv_sigma, threads, tol)\n\n"
             "One sample of the soft N-cut. Buffers are C-contiguous: image float32 (V,), probs "
             "float32 (K, V), assoc float32 (K, V) out, degree float32 (V,) out, sums float64 "
             "(2, K) out (N_k then D_k), shape (nz, ny, nx), offsets int32 (n, 3) of the half "
             "ball (δz >= 0), weights float32 (n,). Where every voxel's classes sum to one "
             "within tol, the last class's association is degree minus the others' and is not "
             "written (one channel less to filter and to store). Returns whether that shortcut "
             "was taken.");

static PyObject *ncut_terms(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer image, probs, assoc, degree, sums, offsets, weights;
    Py_ssize_t nz, ny, nx;
    float inv_sigma, tol;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*w*w*(nnn)y*y*fif", &image, &probs, &assoc, &degree, &sums,
                          &nz, &ny, &nx, &offsets, &weights, &inv_sigma, &threads, &tol))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t V = nz * ny * nx;
    const Py_ssize_t n_off = weights.len / (Py_ssize_t)sizeof(float);
    const Py_ssize_t K = V > 0 ? probs.len / ((Py_ssize_t)sizeof(float) * V) : 0;
    if (nz < 1 || ny < 1 || nx < 1) {
        PyErr_SetString(PyExc_ValueError, "shape must be positive");
        goto done;
    }
    if (K < 2) {
        PyErr_SetString(PyExc_ValueError, "probs needs at least two classes");
        goto done;
    }
    if (check_buffer(&image, sizeof(float), V, "image") || check_buffer(&probs, sizeof(float), K * V, "probs") ||
        check_buffer(&assoc, sizeof(float), K * V, "assoc") ||
        check_buffer(&degree, sizeof(float), V, "degree") ||
        check_buffer(&sums, sizeof(double), 2 * K, "sums") ||
        check_buffer(&offsets, sizeof(int32_t), 3 * n_off, "offsets"))
        goto done;
    const int32_t *off = offsets.buf;
    for (Py_ssize_t o = 0; o < n_off; o++) {
        const int32_t dz = off[3 * o], dy = off[3 * o + 1], dx = off[3 * o + 2];
        if (dz < 0 || (dz == 0 && (dy < 0 || (dy == 0 && dx <= 0)))) {
            PyErr_SetString(PyExc_ValueError, "offsets must be lexicographically positive");
            goto done;
        }
    }
    shared_t *sh = calloc(1, sizeof(shared_t));
    if (sh == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    sh->pb = (problem_t){image.buf, -inv_sigma * inv_sigma, probs.buf, 0, nz, ny, nx, off,
                         weights.buf, (int)n_off, assoc.buf, degree.buf};
    sh->K = K;
    sh->tol = tol;
    int complete;
    Py_BEGIN_ALLOW_THREADS;
    complete = compute(sh, threads, sums.buf);
    Py_END_ALLOW_THREADS;
    free(sh);
    if (complete < 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyBool_FromLong(complete);
done:
    PyBuffer_Release(&image);
    PyBuffer_Release(&probs);
    PyBuffer_Release(&assoc);
    PyBuffer_Release(&degree);
    PyBuffer_Release(&sums);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&weights);
    return result;
}

/* ------------------------------------------------------------------------------------------
 * The gradient: ∂J/∂p_k = ca_k A_k + cd_k d, with A_K = d - Σ_{k<K} A_k when only K-1 classes
 * were stored. Split over threads by ranges of voxels.
 */

typedef struct {
    const float *a, *d;
    const double *ca, *cd;
    float *g;
    Py_ssize_t K, C, V, v0, v1;
} grad_job_t;

static void *grad_range(void *arg)
{
    const grad_job_t *j = arg;
    const Py_ssize_t K = j->K, C = j->C, V = j->V, v0 = j->v0, v1 = j->v1;
    const float *d = j->d;
    for (Py_ssize_t c = 0; c < C; c++) {
        const float ca = (float)j->ca[c], cd = (float)j->cd[c];
        const float *ac = j->a + c * V;
        float *gc = j->g + c * V;
        CELLCUT_SIMD
        for (Py_ssize_t v = v0; v < v1; v++) gc[v] = ca * ac[v] + cd * d[v];
    }
    if (C < K) { /* last = d - Σ a_c:  g = ca (d - Σ a_c) + cd d = (ca + cd) d - ca Σ a_c */
        const float ca = (float)j->ca[K - 1], cd = (float)j->cd[K - 1];
        float *gl = j->g + (K - 1) * V;
        CELLCUT_SIMD
        for (Py_ssize_t v = v0; v < v1; v++) gl[v] = (ca + cd) * d[v];
        for (Py_ssize_t c = 0; c < C; c++) {
            const float *ac = j->a + c * V;
            CELLCUT_SIMD
            for (Py_ssize_t v = v0; v < v1; v++) gl[v] -= ca * ac[v];
        }
    }
    return NULL;
}

PyDoc_STRVAR(ncut_grad_doc,
             "ncut_grad(assoc, degree, coef_assoc, coef_degree, grad, threads)\n\n"
             "grad_k = coef_assoc[k] * A_k + coef_degree[k] * degree for one sample. assoc holds "
             "C = K or K-1 float32 channels of V values (with K-1, A_K = degree - Σ A_k); "
             "coef_* are float64 (K,); grad is float32 (K, V), written.");

static PyObject *ncut_grad(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer assoc, degree, ca, cd, grad;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*i", &assoc, &degree, &ca, &cd, &grad, &threads))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t V = degree.len / (Py_ssize_t)sizeof(float);
    const Py_ssize_t K = ca.len / (Py_ssize_t)sizeof(double);
    const Py_ssize_t C = V > 0 ? assoc.len / ((Py_ssize_t)sizeof(float) * V) : 0;
    if (V < 1 || K < 2 || (C != K && C != K - 1)) {
        PyErr_SetString(PyExc_ValueError, "assoc must hold K or K-1 channels of degree's size");
        goto done;
    }
    if (check_buffer(&assoc, sizeof(float), C * V, "assoc") ||
        check_buffer(&cd, sizeof(double), K, "coef_degree") ||
        check_buffer(&grad, sizeof(float), K * V, "grad"))
        goto done;
#ifdef CELLCUT_NO_PTHREAD
    threads = 1;
#endif
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (V < 65536) threads = 1; /* not worth a thread */
    grad_job_t jobs[MAX_THREADS];
    Py_BEGIN_ALLOW_THREADS;
    const Py_ssize_t step = (V + threads - 1) / threads;
    for (int t = 0; t < threads; t++) {
        const Py_ssize_t v0 = t * step < V ? t * step : V;
        const Py_ssize_t v1 = v0 + step < V ? v0 + step : V;
        jobs[t] = (grad_job_t){assoc.buf, degree.buf, ca.buf, cd.buf, grad.buf, K, C, V, v0, v1};
    }
#ifndef CELLCUT_NO_PTHREAD
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, grad_range, &jobs[t]) == 0;
    grad_range(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            grad_range(&jobs[t]);
    }
#else
    grad_range(&jobs[0]);
#endif
    Py_END_ALLOW_THREADS;
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&assoc);
    PyBuffer_Release(&degree);
    PyBuffer_Release(&ca);
    PyBuffer_Release(&cd);
    PyBuffer_Release(&grad);
    return result;
}

static PyMethodDef methods[] = {
    {"ncut_terms", ncut_terms, METH_VARARGS, ncut_terms_doc},
    {"ncut_grad", ncut_grad, METH_VARARGS, ncut_grad_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_affinity",
    .m_doc = "The soft N-cut's offset loop in C (see cellcut.losses.ncut).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__affinity(void) { return PyModule_Create(&module); }
