/* Dense fp32 MatMul and Conv2d through oneDNN's C API, weights prepacked once per call site (dense.h). */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "edgevla/dense.h"
#include "edgevla/kernels.h"

#define SAMPLES 32  /* weight values remembered per entry to tell a reused address from the same weights */

typedef struct entry {
    struct entry *next;
    int kind;                    /* 0 matmul, 1 conv2d */
    const float *w;              /* the caller's weights (address part of the key) */
    int32_t key[20];             /* the op's shape */
    size_t w_elems;
    float sample[SAMPLES];
    dnnl_primitive_t prim;
    dnnl_memory_t src, weights, dst;  /* weights: the prepacked copy (owned by oneDNN) */
    pthread_mutex_t run_lock;    /* src/dst handles are set per call: one caller at a time per entry */
} entry;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static entry *cache = NULL;
static dnnl_engine_t engine = NULL;
static dnnl_stream_t stream = NULL;
static int threads = 0;  /* TVM_NUM_THREADS when set: the bundle's one thread-count knob */

static int init_locked(void) {
    if (engine) return EVLA_OK;
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) return EVLA_ERR_NOMEM;
    if (dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        dnnl_engine_destroy(engine);
        engine = NULL;
        return EVLA_ERR_NOMEM;
    }
    const char *t = getenv("TVM_NUM_THREADS");
    threads = t ? atoi(t) : 0;
    return EVLA_OK;
}

static void take_sample(const float *w, size_t elems, float out[SAMPLES]) {
    for (int i = 0; i < SAMPLES; i++) out[i] = w[(size_t)((double)i * (double)(elems - 1) / (SAMPLES - 1))];
}

static int same_sample(const entry *e, const float *w) {
    float now[SAMPLES];
    take_sample(w, e->w_elems, now);
    return memcmp(now, e->sample, sizeof now) == 0;
}

static void destroy_entry(entry *e) {
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->src) dnnl_memory_destroy(e->src);
    if (e->weights) dnnl_memory_destroy(e->weights);
    if (e->dst) dnnl_memory_destroy(e->dst);
    pthread_mutex_destroy(&e->run_lock);
    free(e);
}

/* Reorder the caller's weights (user layout `user_md`) into `e->weights` (the primitive's choice). */
static int prepack(entry *e, const dnnl_memory_desc_t *user_md, const dnnl_memory_desc_t *packed_md) {
    dnnl_memory_t user = NULL;
    dnnl_primitive_desc_t reorder_pd = NULL;
    dnnl_primitive_t reorder = NULL;
    int status = EVLA_ERR_NOMEM;
    if (dnnl_memory_create(&e->weights, packed_md, engine, DNNL_MEMORY_ALLOCATE) != dnnl_success) goto done;
    if (dnnl_memory_create(&user, user_md, engine, (void *)e->w) != dnnl_success) goto done;
    if (dnnl_reorder_primitive_desc_create(&reorder_pd, user_md, engine, packed_md, engine, NULL) != dnnl_success)
        goto done;
    if (dnnl_primitive_create(&reorder, reorder_pd) != dnnl_success) goto done;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, e->weights}};
    if (dnnl_primitive_execute(reorder, stream, 2, args) != dnnl_success) goto done;
    dnnl_stream_wait(stream);
    status = EVLA_OK;
done:
    if (reorder) dnnl_primitive_destroy(reorder);
    if (reorder_pd) dnnl_primitive_desc_destroy(reorder_pd);
    if (user) dnnl_memory_destroy(user);
    return status;
}

/* Create the primitive for `op_desc`, prepack the weights and make the src/dst memory objects. */
static int build(entry *e, const_dnnl_op_desc_t op_desc, const dnnl_memory_desc_t *user_w) {
    dnnl_primitive_desc_t pd = NULL;
    int status = EVLA_ERR_SHAPE;  /* oneDNN refusing the descriptor means a shape it cannot run */
    if (dnnl_primitive_desc_create(&pd, op_desc, NULL, engine, NULL) != dnnl_success) goto done;
    status = EVLA_ERR_NOMEM;
    if (dnnl_primitive_create(&e->prim, pd) != dnnl_success) goto done;
    const dnnl_memory_desc_t *src_md = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *w_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dst_md = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    if (dnnl_memory_create(&e->src, src_md, engine, DNNL_MEMORY_NONE) != dnnl_success) goto done;
    if (dnnl_memory_create(&e->dst, dst_md, engine, DNNL_MEMORY_NONE) != dnnl_success) goto done;
    status = prepack(e, user_w, w_md);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    return status;
}

typedef int (*builder)(entry *e);

/* The cached entry for (kind, w, key), built by `make` on first use (or rebuilt when the weights changed). */
static entry *lookup(int kind, const float *w, const int32_t *key, int key_len, size_t w_elems, builder make,
                     int *status) {
    pthread_mutex_lock(&cache_lock);
    *status = init_locked();
    entry *found = NULL, **link = &cache;
    if (*status) goto done;
    for (entry *e = cache; e; link = &e->next, e = e->next) {
        if (e->kind == kind && e->w == w && memcmp(e->key, key, sizeof(int32_t) * key_len) == 0) {
            if (same_sample(e, w)) { found = e; goto done; }
            *link = e->next;  /* same address, other weights: the old array was freed; drop its copy */
            destroy_entry(e);
            break;
        }
    }
    entry *e = calloc(1, sizeof *e);
    if (!e) { *status = EVLA_ERR_NOMEM; goto done; }
    e->kind = kind;
    e->w = w;
    memcpy(e->key, key, sizeof(int32_t) * key_len);
    e->w_elems = w_elems;
    take_sample(w, w_elems, e->sample);
    pthread_mutex_init(&e->run_lock, NULL);
    *status = make(e);
    if (*status) { destroy_entry(e); goto done; }
    e->next = cache;
    cache = e;
    found = e;
done:
    pthread_mutex_unlock(&cache_lock);
    return found;
}

static int execute(entry *e, const float *x, float *y) {
    pthread_mutex_lock(&e->run_lock);
    if (threads > 0) omp_set_num_threads(threads);
    dnnl_memory_set_data_handle(e->src, (void *)x);
    dnnl_memory_set_data_handle(e->dst, y);
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->weights}, {DNNL_ARG_DST, e->dst}};
    dnnl_status_t s = dnnl_primitive_execute(e->prim, stream, 3, args);
    if (s == dnnl_success) s = dnnl_stream_wait(stream);
    pthread_mutex_unlock(&e->run_lock);
    return s == dnnl_success ? EVLA_OK : EVLA_ERR_NOMEM;
}

/* ---- MatMul ---- */

static int build_matmul(entry *e) {
    const dnnl_dim_t rows = e->key[0], n = e->key[1], k = e->key[2];
    dnnl_memory_desc_t src, w_any, w_user, dst;
    dnnl_memory_desc_init_by_tag(&src, 2, (dnnl_dims_t){rows, k}, dnnl_f32, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&w_any, 2, (dnnl_dims_t){k, n}, dnnl_f32, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&w_user, 2, (dnnl_dims_t){k, n}, dnnl_f32, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&dst, 2, (dnnl_dims_t){rows, n}, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t desc;
    if (dnnl_matmul_desc_init(&desc, &src, &w_any, NULL, &dst) != dnnl_success) return EVLA_ERR_SHAPE;
    return build(e, &desc, &w_user);
}

int evla_dense_matmul_f32(const float *x, int32_t rows, const float *w, int32_t n, int32_t k, float *y) {
    if (!x || !w || !y) return EVLA_ERR_NULL;
    if (rows < 1 || n < 1 || k < 1) return EVLA_ERR_SHAPE;
    const int32_t key[3] = {rows, n, k};
    int status;
    entry *e = lookup(0, w, key, 3, (size_t)k * n, build_matmul, &status);
    return e ? execute(e, x, y) : status;
}

/* ---- Conv2d ---- */

static int build_conv(entry *e) {
    const evla_conv2d_shape *s = (const evla_conv2d_shape *)e->key;
    const dnnl_dim_t g = s->groups, oc = s->out_c, ic = s->in_c;
    dnnl_memory_desc_t src, w_any, w_user, dst;
    const dnnl_format_tag_t act = s->channels_last ? dnnl_nhwc : dnnl_nchw;
    dnnl_memory_desc_init_by_tag(&src, 4, (dnnl_dims_t){s->batch, ic, s->in_h, s->in_w}, dnnl_f32, act);
    dnnl_memory_desc_init_by_tag(&dst, 4, (dnnl_dims_t){s->batch, oc, s->out_h, s->out_w}, dnnl_f32, act);
    if (g == 1) {
        dnnl_memory_desc_init_by_tag(&w_any, 4, (dnnl_dims_t){oc, ic, s->k_h, s->k_w}, dnnl_f32, dnnl_format_tag_any);
        dnnl_memory_desc_init_by_tag(&w_user, 4, (dnnl_dims_t){oc, ic, s->k_h, s->k_w}, dnnl_f32,
                                     s->channels_last ? dnnl_ohwi : dnnl_oihw);
    } else {  /* grouped weights [g, oc/g, ic/g, kh, kw]: the same bytes as OIHW (OHWI: as ohwi per group) */
        dnnl_memory_desc_init_by_tag(&w_any, 5, (dnnl_dims_t){g, oc / g, ic / g, s->k_h, s->k_w}, dnnl_f32,
                                     dnnl_format_tag_any);
        dnnl_memory_desc_init_by_tag(&w_user, 5, (dnnl_dims_t){g, oc / g, ic / g, s->k_h, s->k_w}, dnnl_f32,
                                     s->channels_last ? dnnl_gohwi : dnnl_goihw);
    }
    dnnl_convolution_desc_t desc;
    if (dnnl_dilated_convolution_forward_desc_init(
            &desc, dnnl_forward_inference, dnnl_convolution_direct, &src, &w_any, NULL, &dst,
            (dnnl_dims_t){s->stride_h, s->stride_w}, (dnnl_dims_t){s->dilation_h - 1, s->dilation_w - 1},
            (dnnl_dims_t){s->pad_top, s->pad_left}, (dnnl_dims_t){s->pad_bottom, s->pad_right}) != dnnl_success)
        return EVLA_ERR_SHAPE;
    return build(e, &desc, &w_user);
}

static int conv_shape_ok(const evla_conv2d_shape *s) {
    if (s->batch < 1 || s->in_c < 1 || s->in_h < 1 || s->in_w < 1 || s->out_c < 1 || s->k_h < 1 || s->k_w < 1 ||
        s->stride_h < 1 || s->stride_w < 1 || s->dilation_h < 1 || s->dilation_w < 1 || s->groups < 1 ||
        s->pad_top < 0 || s->pad_left < 0 || s->pad_bottom < 0 || s->pad_right < 0 ||
        s->in_c % s->groups || s->out_c % s->groups || (s->channels_last != 0 && s->channels_last != 1))
        return 0;
    const int32_t oh = (s->in_h + s->pad_top + s->pad_bottom - s->dilation_h * (s->k_h - 1) - 1) / s->stride_h + 1;
    const int32_t ow = (s->in_w + s->pad_left + s->pad_right - s->dilation_w * (s->k_w - 1) - 1) / s->stride_w + 1;
    return oh == s->out_h && ow == s->out_w && oh > 0 && ow > 0;
}

int evla_dense_conv2d_f32(const float *x, const float *w, const evla_conv2d_shape *shape, float *y) {
    if (!x || !w || !y || !shape) return EVLA_ERR_NULL;
    if (!conv_shape_ok(shape)) return EVLA_ERR_SHAPE;
    _Static_assert(sizeof(evla_conv2d_shape) <= sizeof(((entry *)0)->key), "conv shape fits the cache key");
    int32_t key[20] = {0};
    memcpy(key, shape, sizeof *shape);
    const size_t w_elems = (size_t)shape->out_c * (shape->in_c / shape->groups) * shape->k_h * shape->k_w;
    int status;
    entry *e = lookup(1, w, key, 20, w_elems, build_conv, &status);
    return e ? execute(e, x, y) : status;
}

int evla_dense_conv2d_f32_flat(const float *x, const float *w, float *y, int32_t batch, int32_t in_c, int32_t in_h,
                               int32_t in_w, int32_t out_c, int32_t out_h, int32_t out_w, int32_t k_h, int32_t k_w,
                               int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
                               int32_t pad_bottom, int32_t pad_right, int32_t dilation_h, int32_t dilation_w,
                               int32_t groups, int32_t channels_last) {
    const evla_conv2d_shape s = {batch, in_c, in_h, in_w, out_c, out_h, out_w, k_h, k_w, stride_h, stride_w,
                                 pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w, groups,
                                 channels_last};
    return evla_dense_conv2d_f32(x, w, &s, y);
}

const char *evla_dense_library(void) {
    static char name[32];
    if (!name[0]) {
        const dnnl_version_t *v = dnnl_version();
        snprintf(name, sizeof name, "onednn %d.%d.%d", v->major, v->minor, v->patch);
    }
    return name;
}
