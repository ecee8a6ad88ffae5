/* A decode step's decoder layers in one native call, for a model whose projections are GGUF blocks
 * (codegemma/gguf/chain.py describes the layers once and calls this per step).
 *
 * Why: each layer is eight native operations (norms, products, attention); called one by one from Python,
 * with a tensor allocated for each result, the calls cost about as much as the attention itself (~4 of a
 * 25 ms step on 2 cores). Here they are the same functions in the same order on float32 rows, so the
 * result is bit-identical to the layer-by-layer path.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int cg_gguf_linear(int n_w, const void *const *Ws, const int *types, const int64_t *Ns, const void *x, int x_bf16,
                   int64_t x_stride, void *y, int y_bf16, int M, int64_t K, int glu);
int cg_add_norm(int t, int M, int D, float eps, const void *x, const void *h, const float *post_scale,
                const float *out_scale, void *x_out, void *y);
int cg_attention(int t, int S, int H, int KV, int D, int64_t start, int64_t max_len, int window, float q_scale,
                 float softcap, float eps, const void *qkv, const float *qk_scale, const void *cos,
                 const void *sin, void *kcache, void *vcache, void *out, int tiles);

/* one fused projection: matrices Ws[i] [Ns[i], K] in GGUF types types[i], N = sum(Ns) outputs */
typedef struct {
    int n_w;
    const void *const *Ws;
    const int *types;
    const int64_t *Ns;
    int64_t N, K;
} cg_projection;

typedef struct {
    cg_projection qkv, o, gate_up, down;
    /* the norms' (1 + w) in float32: before attention; after it (Gemma 2/3) or before the MLP (Gemma 1);
     * before and after the MLP (Gemma 2/3; NULL for Gemma 1) */
    const float *input_scale, *post_attention_scale, *pre_mlp_scale, *post_mlp_scale;
    const float *qk_scale; /* [H + KV, Dh] or NULL: no q/k norms */
    const float *cos, *sin; /* whole RoPE tables [max_len, Dh] */
    float *kcache, *vcache; /* [KV, max_len, Dh] */
    int window;             /* 0: global attention */
} cg_layer;

typedef struct {
    int D, H, KV, Dh;
    int64_t max_len;
    float eps, q_scale, softcap;
} cg_shape;

/* x [M, D] (float32) through n layers, in place: rows at positions start.. of the layers' own caches, or
 * (positions given) row m at positions[m] of its own sequence, whose keys and values for layer l are at
 * kcaches[l * M + m] and vcaches[l * M + m] (batched decoding). Returns 0, -1 out of memory, or the first
 * failing operation's code. */
int cg_gguf_layers(const cg_shape *s, int n, const cg_layer *layers, int M, int64_t start, float *x,
                   const int64_t *positions, float *const *kcaches, float *const *vcaches) {
    int64_t D = s->D, qkv_n = layers[0].qkv.N, att_n = (int64_t)s->H * s->Dh, ff = 0;
    for (int l = 0; l < n; l++)
        if (layers[l].gate_up.N / 2 > ff) ff = layers[l].gate_up.N / 2;
    float *buf = (float *)malloc(sizeof(float) * (size_t)M * (size_t)(4 * D + qkv_n + att_n + ff));
    if (!buf) return -1;
    float *h = buf, *o = h + M * D, *x2 = o + M * D, *d = x2 + M * D, *qkv = d + M * D, *att = qkv + M * qkv_n;
    float *g = att + M * att_n;
    int rc = 0;
    for (int l = 0; l < n && rc == 0; l++) {
        const cg_layer *L = layers + l;
        const cg_projection *p;
        int sandwich = L->post_mlp_scale != NULL;
        if ((rc = cg_add_norm(0, M, (int)D, s->eps, x, NULL, NULL, L->input_scale, NULL, h))) break;
        p = &L->qkv;
        if ((rc = cg_gguf_linear(p->n_w, p->Ws, p->types, p->Ns, h, 0, p->K, qkv, 0, M, p->K, 0))) break;
        if (!positions) {
            rc = cg_attention(0, M, s->H, s->KV, s->Dh, start, s->max_len, L->window, s->q_scale, s->softcap, s->eps,
                              qkv, L->qk_scale, L->cos + start * s->Dh, L->sin + start * s->Dh, L->kcache, L->vcache,
                              att, 0);
        } else {
            for (int m = 0; m < M && rc == 0; m++) {
                int64_t pos = positions[m];
                rc = cg_attention(0, 1, s->H, s->KV, s->Dh, pos, s->max_len, L->window, s->q_scale, s->softcap, s->eps,
                                  qkv + m * qkv_n, L->qk_scale, L->cos + pos * s->Dh, L->sin + pos * s->Dh,
                                  kcaches[(int64_t)l * M + m], vcaches[(int64_t)l * M + m], att + m * att_n, 0);
            }
        }
        if (rc) break;
        p = &L->o;
        if ((rc = cg_gguf_linear(p->n_w, p->Ws, p->types, p->Ns, att, 0, p->K, o, 0, M, p->K, 0))) break;
        /* x + post(o), and the MLP's input norm of that */
        if ((rc = cg_add_norm(0, M, (int)D, s->eps, x, o, sandwich ? L->post_attention_scale : NULL,
                              sandwich ? L->pre_mlp_scale : L->post_attention_scale, x2, h)))
            break;
        p = &L->gate_up;
        if ((rc = cg_gguf_linear(p->n_w, p->Ws, p->types, p->Ns, h, 0, p->K, g, 0, M, p->K, 1))) break;
        p = &L->down;
        if ((rc = cg_gguf_linear(p->n_w, p->Ws, p->types, p->Ns, g, 0, p->K, d, 0, M, p->K, 0))) break;
        if ((rc = cg_add_norm(0, M, (int)D, s->eps, x2, d, sandwich ? L->post_mlp_scale : NULL, NULL, x, NULL))) break;
    }
    free(buf);
    return rc;
}
