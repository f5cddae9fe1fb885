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
 * Components are tracked over watershed basins rather than voxels, which keeps
 * every neighbour scan in voxel order on a compact padded grid (fixed offsets,
 * no adjacency lists to stream through memory) and the union-find small:
 *
 * 1. (voxel order) each positive voxel points to its highest higher neighbour;
 *    voxels without one are peaks. Following the pointers upwards partitions
 *    the positive voxels into basins, one per peak, and each basin's part above
 *    any height h is connected (every voxel's ascent path stays above it). The
 *    same scan records which neighbours are higher (a bit mask).
 * 2. (voxel order, once basins are known) a voxel whose higher neighbours lie
 *    in other basins records those basins: at the voxel's height the upper
 *    level set joins them.
 * 3. (height order) sweep down: a voxel adds 1 to its basin's component, then
 *    merges the recorded basins; union-find over basins.
 *
 * The components of the upper level set at every height are exactly those of
 * the voxel graph, so the integral is the exact TFCE. Voxels are ordered by
 * (value, grid index), a strict total order, so ties cannot cycle and add only
 * zero-length intervals.
 *
 * Plain C, no Python API; loaded with ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 2048
#define KEY_GT(vj, j, vi, i) ((vj) > (vi) || ((vj) == (vi) && (j) > (i)))

typedef struct {        /* a component root's state, one cache line fetch */
  double best, lastp;
  int size, pad;
} Root;

typedef struct {
  uint64_t *ord, *tmp;  /* (float bits << 32) | grid index, sorted ascending */
  float *val;           /* the signed map on the padded grid, 0 outside the mask */
  int *up, *basin;      /* per grid voxel: ascent target and basin */
  int *up_neg;          /* ascent target of -v */
  uint32_t *higher_neg; /* higher-neighbour bits of -v */
  int *sbasin;          /* basin of each positive voxel, in height order */
  uint32_t *higher;     /* per grid voxel: bit k set when neighbour k is higher */
  int *fstart, *flist;  /* per mask voxel: foreign basins among higher neighbours */
  unsigned char *fcount;
  int *bparent;         /* union-find over basins */
  Root *root;           /* per basin */
  double *size_e;       /* s^E */
} Work;

static int find_root(int *parent, int x)
{
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];
    x = parent[x];
  }
  return x;
}

/* LSD radix sort on the upper 32 bits (positive float bits are monotone). Stable. */
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

/* Step 1 for both signs at once: ascent pointers and higher-neighbour masks of
 * v (positive pass) and of -v (negative pass), over the grid span of the mask
 * in blocks. For each offset the inner loop streams through contiguous memory
 * without branches, so the compiler vectorises it. The tie-break "q > g" is
 * "offset > 0", a constant per offset. */
static void scan_both(Work *w, const int *runs, int n_runs, const int *off, int K)
{
  int r, k;
  const float *v = w->val;
  float bp[BLOCK], bn[BLOCK];
  int ip[BLOCK], in[BLOCK];
  uint32_t hp[BLOCK], hn[BLOCK];
  /* runs of consecutive mask voxels along the last axis, split into blocks */
  for (r = 0; r < n_runs; r++) {
   int g0, gend = runs[2 * r] + runs[2 * r + 1];
   for (g0 = runs[2 * r]; g0 < gend; g0 += BLOCK) {
    int len = gend - g0 < BLOCK ? gend - g0 : BLOCK, t;
    const float *vi = v + g0;
    for (t = 0; t < len; t++) {
      bp[t] = bn[t] = vi[t];
      ip[t] = in[t] = g0 + t;
      hp[t] = hn[t] = 0;
    }
    for (k = 0; k < K; k++) {
      const int o = off[k];
      const float *vq = v + g0 + o;
      const uint32_t bit = (uint32_t)1 << k;
      if (o > 0) {
        for (t = 0; t < len; t++) {
          int q = g0 + t + o;
          int up = (vq[t] > bp[t]) | ((vq[t] == bp[t]) & (q > ip[t]));
          int dn = (vq[t] < bn[t]) | ((vq[t] == bn[t]) & (q > in[t]));
          hp[t] |= (vq[t] >= vi[t]) ? bit : 0u;
          hn[t] |= (vq[t] <= vi[t]) ? bit : 0u;
          bp[t] = up ? vq[t] : bp[t];
          ip[t] = up ? q : ip[t];
          bn[t] = dn ? vq[t] : bn[t];
          in[t] = dn ? q : in[t];
        }
      } else {
        for (t = 0; t < len; t++) {
          int q = g0 + t + o;
          int up = (vq[t] > bp[t]) | ((vq[t] == bp[t]) & (q > ip[t]));
          int dn = (vq[t] < bn[t]) | ((vq[t] == bn[t]) & (q > in[t]));
          hp[t] |= (vq[t] > vi[t]) ? bit : 0u;
          hn[t] |= (vq[t] < vi[t]) ? bit : 0u;
          bp[t] = up ? vq[t] : bp[t];
          ip[t] = up ? q : ip[t];
          bn[t] = dn ? vq[t] : bn[t];
          in[t] = dn ? q : in[t];
        }
      }
    }
    memcpy(w->up + g0, ip, (size_t)len * sizeof(int));
    memcpy(w->higher + g0, hp, (size_t)len * sizeof(uint32_t));
    memcpy(w->up_neg + g0, in, (size_t)len * sizeof(int));
    memcpy(w->higher_neg + g0, hn, (size_t)len * sizeof(uint32_t));
   }
  }
}

static double pass_max(Work *w, int V, const int *gidx, const int *off, float sign,
                       const int *up, const uint32_t *higher, double H)
{
  int m, k, n = 0, nb = 0, nf = 0;
  double Hp1 = H + 1.0, best_all = 0.0;
  int cube = (H == 2.0);
  const float *v = w->val;
  int *basin = w->basin;

  for (m = 0; m < V; m++) {
    float vi = sign * v[gidx[m]];
    if (vi > 0.0f) {
      uint32_t bits;
      memcpy(&bits, &vi, sizeof(bits));
      w->ord[n++] = ((uint64_t)bits << 32) | (uint32_t)m;
    }
  }
  if (n == 0) return 0.0;
  radix_sort(w->ord, w->tmp, n);  /* ascending (value, index): stable, inserted in index order */

  /* basins, highest first: a voxel's ascent target is always processed before
     it. The sweep reads each voxel's basin in this order, so keep a copy. */
  for (k = n - 1; k >= 0; k--) {
    int g = gidx[(int)(w->ord[k] & 0xFFFFFFFFu)];
    int b = (up[g] == g) ? nb++ : basin[up[g]];
    basin[g] = b;
    w->sbasin[k] = b;
  }

  /* 2: foreign basins among the higher neighbours, in voxel order */
  for (m = 0; m < V; m++) {
    int g = gidx[m], bi, start = nf;
    uint32_t hm;
    if (!(sign * v[g] > 0.0f)) continue;
    bi = basin[g];
    w->fstart[m] = nf;
    for (hm = higher[g]; hm; hm &= hm - 1) {
      int bq = basin[g + off[__builtin_ctz(hm)]], j, seen = 0;
      if (bq == bi) continue;
      for (j = start; j < nf; j++) if (w->flist[j] == bq) { seen = 1; break; }
      if (!seen) w->flist[nf++] = bq;
    }
    w->fcount[m] = (unsigned char)(nf - start);
  }

  /* 3: the sweep over basins */
  for (k = 0; k < nb; k++) {
    w->bparent[k] = k;
    w->root[k].size = 0;
    w->root[k].best = 0.0;
    w->root[k].lastp = 0.0;
  }
  for (k = n - 1; k >= 0; k--) {
    int mi = (int)(w->ord[k] & 0xFFFFFFFFu), j, ru;
    uint32_t bits = (uint32_t)(w->ord[k] >> 32);
    float hf;
    double h, hp;
    Root *a;
    memcpy(&hf, &bits, sizeof(hf));
    h = (double)hf;
    hp = (cube ? h * h * h : pow(h, Hp1)) / Hp1;

    ru = find_root(w->bparent, w->sbasin[k]);
    a = &w->root[ru];
    if (a->size > 0) a->best += w->size_e[a->size] * (a->lastp - hp);
    a->lastp = hp;
    a->size += 1;

    if (!w->fcount[mi]) continue;
    for (j = w->fstart[mi]; j < w->fstart[mi] + w->fcount[mi]; j++) {
      int rv = find_root(w->bparent, w->flist[j]);
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

/* data: B maps of V mask voxels, map b at data + b * V.
 * gidx: ascending C-order index of each mask voxel in a (nx, ny, nz) grid padded
 * so that every mask voxel has all its neighbours inside the grid; runs: n_runs
 * (start grid index, length) pairs of consecutive mask voxels.
 * Returns 0, -1 on no memory, -2 on a bad connectivity. */
int tfce_max_grid(const float *data, int V, int B, const int *gidx, const int *runs, int n_runs,
                  int nx, int ny, int nz, int connectivity, double E, double H,
                  double *max_pos, double *max_neg)
{
  Work w;
  int off[26], K = 0, dx, dy, dz, i, b, rc = 0;
  size_t G = (size_t)nx * ny * nz;
  int limit = connectivity == 6 ? 1 : connectivity == 18 ? 2 : connectivity == 26 ? 3 : 0;
  if (!limit) return -2;
  for (dx = -1; dx <= 1; dx++)
    for (dy = -1; dy <= 1; dy++)
      for (dz = -1; dz <= 1; dz++) {
        int a = abs(dx) + abs(dy) + abs(dz);
        if (a > 0 && a <= limit) off[K++] = (dx * ny + dy) * nz + dz;
      }

  memset(&w, 0, sizeof(w));
  w.ord = (uint64_t *)malloc((size_t)V * sizeof(uint64_t));
  w.tmp = (uint64_t *)malloc((size_t)V * sizeof(uint64_t));
  w.val = (float *)calloc(G, sizeof(float));
  w.up = (int *)malloc(G * sizeof(int));
  w.up_neg = (int *)malloc(G * sizeof(int));
  w.higher_neg = (uint32_t *)malloc(G * sizeof(uint32_t));
  w.basin = (int *)calloc(G, sizeof(int));
  w.sbasin = (int *)malloc((size_t)V * sizeof(int));
  w.higher = (uint32_t *)malloc(G * sizeof(uint32_t));
  w.fstart = (int *)malloc((size_t)V * sizeof(int));
  w.fcount = (unsigned char *)malloc((size_t)V);
  w.flist = (int *)malloc((size_t)V * K * sizeof(int));   /* at most one per neighbour */
  w.bparent = (int *)malloc((size_t)V * sizeof(int));
  w.root = (Root *)malloc((size_t)V * sizeof(Root));
  w.size_e = (double *)malloc(((size_t)V + 1) * sizeof(double));
  if (!w.ord || !w.tmp || !w.val || !w.up || !w.up_neg || !w.higher_neg || !w.basin || !w.sbasin || !w.higher || !w.fstart || !w.fcount ||
      !w.flist || !w.bparent || !w.root || !w.size_e) {
    rc = -1;
    goto done;
  }
  for (i = 0; i <= V; i++) w.size_e[i] = (E == 0.5) ? sqrt((double)i) : pow((double)i, E);
  for (b = 0; b < B; b++) {
    const float *d = data + (size_t)b * V;
    for (i = 0; i < V; i++) w.val[gidx[i]] = d[i];
    scan_both(&w, runs, n_runs, off, K);
    max_pos[b] = pass_max(&w, V, gidx, off, 1.0f, w.up, w.higher, H);
    max_neg[b] = pass_max(&w, V, gidx, off, -1.0f, w.up_neg, w.higher_neg, H);
  }
done:
  free(w.ord); free(w.tmp); free(w.val); free(w.up); free(w.up_neg); free(w.higher_neg); free(w.basin); free(w.sbasin); free(w.higher);
  free(w.fstart); free(w.fcount); free(w.flist); free(w.bparent); free(w.root); free(w.size_e);
  return rc;
}
