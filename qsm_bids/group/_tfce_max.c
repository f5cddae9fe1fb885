/* Maximum of the exact TFCE of a map, for permutation null distributions.
 *
 * TFCE(v) = int_0^{t_v} e_v(h)^E h^H dh. Sweeping the heights downwards with
 * union-find, a component of constant size s between heights a > b adds
 * s^E (a^{H+1} - b^{H+1}) / (H+1) to every member, so each component root keeps
 * only its size, the height it was last brought up to date at, and the best
 * (largest) integral of any member so far. Merging takes the larger best; a new
 * voxel starts at 0. The maximum TFCE is the largest best at height 0. No tree,
 * no per-voxel output: just the number the FWE correction needs.
 *
 * Ties need no special handling: equal heights add a zero-length interval.
 * Plain C, no Python API; loaded with ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {        /* a component root's state, one cache line fetch */
  double best, lastp;
  int size, pad;
} Root;

typedef struct {
  uint64_t *ord, *tmp;  /* (float bits << 32) | voxel, sorted ascending */
  int *parent;
  unsigned char *active; /* 0: below the sweep; a small array keeps the checks in cache */
  Root *root;
  double *size_e;
} Work;

static int find_root(int *parent, int x)
{
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];
    x = parent[x];
  }
  return x;
}

/* LSD radix sort on the upper 32 bits (positive float bits are monotone). */
static void radix_sort(uint64_t *a, uint64_t *tmp, int n)
{
  int pass;
  for (pass = 0; pass < 4; pass++) {
    int shift = 32 + 8 * pass, i;
    size_t count[257];
    memset(count, 0, sizeof(count));
    for (i = 0; i < n; i++) count[((a[i] >> shift) & 0xFF) + 1]++;
    for (i = 0; i < 256; i++) count[i + 1] += count[i];
    for (i = 0; i < n; i++) tmp[count[(a[i] >> shift) & 0xFF]++] = a[i];
    { uint64_t *s = a; a = tmp; tmp = s; }
  }
  /* four passes: the sorted data is back in the caller's array */
}

static double pass_max(Work *w, const float *d, int N, float sign,
                       const int *indptr, const int *indices, double E, double H)
{
  int i, n = 0;
  double Hp1 = H + 1.0, best_all = 0.0;
  int cube = (H == 2.0);

  for (i = 0; i < N; i++) {
    float v = sign * d[i];
    if (v > 0.0f) {
      uint32_t bits;
      memcpy(&bits, &v, sizeof(bits));
      w->ord[n++] = ((uint64_t)bits << 32) | (uint32_t)i;
    }
  }
  if (n == 0) return 0.0;
  radix_sort(w->ord, w->tmp, n);

  for (i = n - 1; i >= 0; i--) {        /* highest first */
    int u = (int)(w->ord[i] & 0xFFFFFFFFu), j, ru;
    uint32_t bits = (uint32_t)(w->ord[i] >> 32);
    float hf;
    double h, hp;
    memcpy(&hf, &bits, sizeof(hf));
    h = (double)hf;
    hp = (cube ? h * h * h : pow(h, Hp1)) / Hp1;

    w->parent[u] = u;
    w->active[u] = 1;
    w->root[u].size = 1;
    w->root[u].best = 0.0;
    w->root[u].lastp = hp;

    ru = u;                               /* u's root, kept current across merges */
    for (j = indptr[u]; j < indptr[u + 1]; j++) {
      int v = indices[j], rv;
      if (!w->active[v]) continue;       /* not yet above the sweep */
      rv = w->parent[v];
      if (rv == ru) continue;            /* the common case: already merged */
      rv = find_root(w->parent, rv);
      if (ru == rv) continue;
      /* bring both components down to h, then merge */
      {
        Root *a = &w->root[ru], *c = &w->root[rv];
        a->best += w->size_e[a->size] * (a->lastp - hp);
        c->best += w->size_e[c->size] * (c->lastp - hp);
        if (a->size < c->size) { Root *t = a; a = c; c = t; int s = ru; ru = rv; rv = s; }
        w->parent[rv] = ru;
        a->size += c->size;
        if (c->best > a->best) a->best = c->best;
        a->lastp = hp;
      }
    }
    (void)ru;
  }

  for (i = 0; i < n; i++) {             /* finish every root at height 0, reset */
    int u = (int)(w->ord[i] & 0xFFFFFFFFu);
    if (w->parent[u] == u) {
      double b = w->root[u].best + w->size_e[w->root[u].size] * w->root[u].lastp;
      if (b > best_all) best_all = b;
    }
  }
  for (i = 0; i < n; i++) w->active[(int)(w->ord[i] & 0xFFFFFFFFu)] = 0;
  return best_all;
}

/* data: B maps of N values, map b at data + b * N. Returns 0, or -1 on no memory. */
int tfce_max_batch(const float *data, int N, int B, const int *indptr, const int *indices,
                   double E, double H, double *max_pos, double *max_neg)
{
  Work w;
  int i, b, rc = 0;
  w.ord = (uint64_t *)malloc((size_t)N * sizeof(uint64_t));
  w.tmp = (uint64_t *)malloc((size_t)N * sizeof(uint64_t));
  w.parent = (int *)malloc((size_t)N * sizeof(int));
  w.root = (Root *)malloc((size_t)N * sizeof(Root));
  w.active = (unsigned char *)calloc((size_t)N, 1);
  w.size_e = (double *)malloc(((size_t)N + 1) * sizeof(double));
  if (!w.ord || !w.tmp || !w.parent || !w.root || !w.active || !w.size_e) {
    rc = -1;
    goto done;
  }
  for (i = 0; i <= N; i++) w.size_e[i] = (E == 0.5) ? sqrt((double)i) : pow((double)i, E);
  for (b = 0; b < B; b++) {
    const float *d = data + (size_t)b * N;
    max_pos[b] = pass_max(&w, d, N, 1.0f, indptr, indices, E, H);
    max_neg[b] = pass_max(&w, d, N, -1.0f, indptr, indices, E, H);
  }
done:
  free(w.ord); free(w.tmp); free(w.parent); free(w.root); free(w.active); free(w.size_e);
  return rc;
}
