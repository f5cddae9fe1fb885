/* Maximum of the exact TFCE of a map, for permutation null distributions.
 *
 * TFCE(v) = int_0^{t_v} e_v(h)^E h^H dh. Sweeping the heights downwards, a
 * component of constant size s between heights a > b adds
 * s^E (a^{H+1} - b^{H+1}) / (H+1) to every member, so each component keeps
 * only its size, the height it was last brought up to date at, and the best
 * (largest) integral of any member so far. Merging takes the larger best; a new
 * voxel starts at 0. The maximum TFCE is the largest best at height 0. No tree,
 * no per-voxel output: just the number the FWE correction needs, and the same
 * closed-form integral as the max-tree of the tfce package (no step size).
 *
 * Components are tracked over watershed basins rather than voxels (see
 * pass_max), which keeps the neighbour scans in voxel order and the union-find
 * small. Plain C, no Python API; loaded with ctypes.
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
  float *val;           /* the signed map */
  int *up, *basin;      /* ascent pointer and basin of each voxel */
  int *fstart, *flist;  /* foreign basins of each voxel's higher neighbours */
  unsigned char *fcount;
  int *bparent;         /* union-find over basins */
  Root *root;           /* per basin */
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

/* Keys order voxels by (value, index): a strict total order, so ties cannot cycle. */
#define KEY_GT(vj, j, vi, i) ((vj) > (vi) || ((vj) == (vi) && (j) > (i)))

static int find_root(int *parent, int x);

/* One signed pass. Three cache-friendly steps replace the per-voxel neighbour
 * search of a plain max-tree sweep, whose random accesses dominate its cost:
 *
 * 1. (voxel order) each positive voxel points to its highest higher neighbour;
 *    voxels without one are peaks. Following the pointers upwards partitions
 *    the positive voxels into basins, one per peak, and each basin's part above
 *    any height h is connected (every voxel's ascent path stays above it).
 * 2. (voxel order, after the basins are known) a voxel whose higher neighbours
 *    lie in other basins records those basins: at the voxel's height the
 *    upper level set joins them. Only such voxels (basin boundaries) do work.
 * 3. (height order) sweep down: a voxel adds 1 to its basin's component, then
 *    merges the recorded basins. Union-find runs over basins, a few thousand,
 *    which stay in cache.
 *
 * Upper level set components at every height are exactly those of the voxel
 * graph, so the integral is the exact TFCE. */
static double pass_max(Work *w, const float *d, int N, float sign,
                       const int *indptr, const int *indices, double E, double H)
{
  int i, k, n = 0, nb = 0;
  double Hp1 = H + 1.0, best_all = 0.0;
  int cube = (H == 2.0);
  float *v = w->val;
  int *up = w->up, *basin = w->basin, *fstart = w->fstart;
  int nf = 0;
  (void)E;                              /* enters through size_e */

  for (i = 0; i < N; i++) v[i] = sign * d[i];

  /* 1: ascent pointers, in voxel order */
  for (i = 0; i < N; i++) {
    float vi = v[i], bv;
    int j, best;
    if (!(vi > 0.0f)) { up[i] = -1; continue; }
    best = i; bv = vi;
    for (j = indptr[i]; j < indptr[i + 1]; j++) {
      int q = indices[j];
      float vq = v[q];
      if (KEY_GT(vq, q, bv, best)) { bv = vq; best = q; }
    }
    up[i] = best;
    {
      uint32_t bits;
      memcpy(&bits, &vi, sizeof(bits));
      w->ord[n++] = ((uint64_t)bits << 32) | (uint32_t)i;
    }
  }
  if (n == 0) return 0.0;
  /* ascending (value, index): inserted in index order and the sort is stable */
  radix_sort(w->ord, w->tmp, n);

  /* basins, highest first: a voxel's ascent target is always processed before it */
  for (k = n - 1; k >= 0; k--) {
    int u = (int)(w->ord[k] & 0xFFFFFFFFu);
    basin[u] = (up[u] == u) ? nb++ : basin[up[u]];
  }

  /* 2: foreign basins among each voxel's higher neighbours, in voxel order */
  for (i = 0; i < N; i++) {
    float vi = v[i];
    int j, bi, start = nf;
    if (!(vi > 0.0f)) continue;
    bi = basin[i];
    fstart[i] = nf;
    for (j = indptr[i]; j < indptr[i + 1]; j++) {
      int q = indices[j], bq, m, seen = 0;
      float vq = v[q];
      if (!KEY_GT(vq, q, vi, i)) continue;
      bq = basin[q];
      if (bq == bi) continue;
      for (m = start; m < nf; m++) if (w->flist[m] == bq) { seen = 1; break; }
      if (!seen) w->flist[nf++] = bq;
    }
    w->fcount[i] = nf - start;
  }

  /* 3: the sweep over basins */
  for (k = 0; k < nb; k++) {
    w->bparent[k] = k;
    w->root[k].size = 0;
    w->root[k].best = 0.0;
    w->root[k].lastp = -1.0;   /* set when the peak activates */
  }
  for (k = n - 1; k >= 0; k--) {
    int u = (int)(w->ord[k] & 0xFFFFFFFFu), m;
    uint32_t bits = (uint32_t)(w->ord[k] >> 32);
    float hf;
    double h, hp;
    Root *a;
    int ru;
    memcpy(&hf, &bits, sizeof(hf));
    h = (double)hf;
    hp = (cube ? h * h * h : pow(h, Hp1)) / Hp1;

    ru = find_root(w->bparent, basin[u]);
    a = &w->root[ru];
    if (a->size > 0) a->best += w->size_e[a->size] * (a->lastp - hp);
    a->lastp = hp;
    a->size += 1;

    for (m = fstart[u]; m < fstart[u] + w->fcount[u]; m++) {
      int rv = find_root(w->bparent, w->flist[m]);
      Root *c;
      if (rv == ru) continue;
      a = &w->root[ru];
      c = &w->root[rv];
      a->best += w->size_e[a->size] * (a->lastp - hp);
      c->best += w->size_e[c->size] * (c->lastp - hp);
      if (a->size < c->size) { Root *t = a; int s = ru; a = c; c = t; ru = rv; rv = s; }
      w->bparent[rv] = ru;
      a->size += c->size;
      if (c->best > a->best) a->best = c->best;
      a->lastp = hp;
    }
  }

  for (k = 0; k < nb; k++) {            /* finish every root at height 0 */
    if (w->bparent[k] == k) {
      double b = w->root[k].best + w->size_e[w->root[k].size] * w->root[k].lastp;
      if (b > best_all) best_all = b;
    }
  }
  return best_all;
}

/* data: B maps of N values, map b at data + b * N. Returns 0, or -1 on no memory. */
int tfce_max_batch(const float *data, int N, int B, const int *indptr, const int *indices,
                   double E, double H, double *max_pos, double *max_neg)
{
  Work w;
  int i, b, rc = 0;
  memset(&w, 0, sizeof(w));
  w.ord = (uint64_t *)malloc((size_t)N * sizeof(uint64_t));
  w.tmp = (uint64_t *)malloc((size_t)N * sizeof(uint64_t));
  w.val = (float *)malloc((size_t)N * sizeof(float));
  w.up = (int *)malloc((size_t)N * sizeof(int));
  w.basin = (int *)malloc((size_t)N * sizeof(int));
  w.fstart = (int *)malloc((size_t)N * sizeof(int));
  w.fcount = (unsigned char *)malloc((size_t)N);
  /* at most one entry per neighbour of every voxel */
  w.flist = (int *)malloc(((size_t)indptr[N] + 1) * sizeof(int));
  w.bparent = (int *)malloc((size_t)N * sizeof(int));
  w.root = (Root *)malloc((size_t)N * sizeof(Root));
  w.size_e = (double *)malloc(((size_t)N + 1) * sizeof(double));
  if (!w.ord || !w.tmp || !w.val || !w.up || !w.basin || !w.fstart || !w.fcount || !w.flist ||
      !w.bparent || !w.root || !w.size_e) {
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
  free(w.ord); free(w.tmp); free(w.val); free(w.up); free(w.basin); free(w.fstart);
  free(w.fcount); free(w.flist); free(w.bparent); free(w.root); free(w.size_e);
  return rc;
}
