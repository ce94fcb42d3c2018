// The C++ CPU engine of deepres: eq. (1) of docs/design.md as compiled loops.
//
// Layout. The work unit is one replica r and one chunk of RB rows of h (RB = 8 or 16, fixed by B
// alone). A unit walks all L layers with its rows held "rows in lanes": H[d*RB + i] is h[row0+i][d],
// so every inner loop runs over the RB rows of the chunk with compile-time length and vectorizes
// (tanh included), and each layer's u, v (M·D numbers, in L1) are reused by all RB rows.
//
// Per layer (forward):  Z = a·u H (M×RB), S = σ(Z), A = vᵀ S (D×RB), H += c·A.
// The M-term sum A is formed apart and added to h once: adding term by term loses accuracy.
//
// Backward of one layer (x = layer input, g = ∂loss/∂h_l):
//   S = σ(a·u x), P = σ'(a·u x) ⊙ (v g),   ∂v = c·S gᵀ,   ∂u = c·a·P xᵀ,   g += c·a·uᵀ P.
// The weight gradients are reductions over the rows of the chunk (lanes), done against a
// transposed copy of g and x so that they vectorize over D.
//
// Determinism. The chunks depend on B only, never on the thread count; a chunk's rows run on one
// thread in a fixed order, and rows never interact, so how chunks are grouped (which depends on the
// thread count) changes no bit. When a replica has several chunks, its weight gradients sum the
// chunks' shares in chunk order, whether as they come (a replica's chunks in lockstep) or from
// partial slots afterwards. Results are therefore bitwise identical whatever torch.set_num_threads
// says.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "outputs.h"
#include "stack_blocks.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using namespace deepres_cpp;

struct Shape {
  int64_t R, B, D, L, M, chunks;
};

// One chunk of rows of one replica: the work unit (see Layout).
struct Unit {
  int64_t index, r, n, offset;  // unit number, replica, rows in the chunk, offset of its first row in h
};

// Runs body(scratch, unit) for every unit, in parallel over units: scratch holds `numbers` T per thread.
template <typename T, int RB, typename F>
void for_each_unit(const Shape& s, int64_t numbers, F&& body) {
  at::parallel_for(0, s.R * s.chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(numbers);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t r = index / s.chunks, row0 = (index % s.chunks) * RB;
      body(scratch.data(), Unit{index, r, std::min<int64_t>(RB, s.B - row0), (r * s.B + row0) * s.D});
    }
  });
}

// A group: the chunks [first, first + count) of replica r, walked together layer by layer (each
// layer once for all of them), so that a layer's weights come from memory once per group rather
// than once per chunk. At A (L 4096, B 64, D 16, M 64) u and v are 32 MiB, the L3's size: chunk
// after chunk, the forward took 19-30 ms depending on where the weights lay in memory; with the four
// chunks as one group, 17-21 ms. Rows do not interact, so the grouping changes no bit of a result.
struct Group {
  int64_t r, first, count;
};

// Groups of at most 16 chunks (256 rows: at B = (L 1024, B 256, D 32, M 32) the forward took 20.8 /
// 18.6 / 16.2 ms with groups of 1 / 4 / 16 chunks), and enough groups that every thread has one.
inline int64_t chunks_per_group(const Shape& s) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t groups_per_replica = std::max<int64_t>(1, (threads + s.R - 1) / s.R);
  return std::clamp<int64_t>((s.chunks + groups_per_replica - 1) / groups_per_replica, 1, 16);
}

// Runs body(scratch, group, unit_of) for every group of `size` chunks (the last of a replica may have
// fewer), in parallel over groups: scratch holds
// `shared` T plus `per_chunk` T for each chunk of the group; unit_of(k) is the group's k-th chunk.
template <typename T, int RB, typename F>
void for_each_group(const Shape& s, int64_t size, int64_t shared, int64_t per_chunk, F&& body) {
  const int64_t per_replica = (s.chunks + size - 1) / size;
  at::parallel_for(0, s.R * per_replica, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(shared + size * per_chunk);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t r = index / per_replica, first = (index % per_replica) * size;
      const Group g{r, first, std::min(size, s.chunks - first)};
      auto unit_of = [&](int64_t k) {
        const int64_t row0 = (g.first + k) * RB;
        return Unit{r * s.chunks + g.first + k, r, std::min<int64_t>(RB, s.B - row0), (r * s.B + row0) * s.D};
      };
      body(scratch.data(), g, unit_of);
    }
  });
}

// Consecutive pieces of a unit's scratch, of the given sizes, from base on.
template <typename T, typename... N>
std::array<T*, sizeof...(N)> carve(T* base, N... sizes) {
  std::array<T*, sizeof...(N)> pieces{};
  size_t i = 0;
  ((pieces[i++] = base, base += sizes), ...);
  return pieces;
}

// One layer forward on a chunk: H += c · vᵀ σ(a · u H). Z, S: M·RB scratch; A: D·RB scratch.
template <typename T, int RB, int DC>
inline void layer_forward(const T* u, const T* v, T* H, T* Z, T* S, T* A, int64_t M, int64_t D, T c, T a,
                          int64_t act) {
  project<T, RB, DC, false>(u, H, Z, M, D, a);
  activate(act, Z, S, M * RB);
  expand<T, RB, DC, false>(v, S, A, M, D);
  for (int64_t e = 0; e < D * RB; ++e) H[e] += c * A[e];
}

template <typename T, int RB, int DC>
void forward_kernel(const T* h0, const T* u, const T* v, T* out, T* ckpt, const Shape& s, T c, T a, int64_t act,
                    int64_t every, bool save) {
  const int64_t DR = s.D * RB, MR = s.M * RB, MD = s.M * s.D;
  for_each_group<T, RB>(s, chunks_per_group(s), DR + 2 * MR, DR, [&](T* scratch, const Group& g, auto unit_of) {
    const auto [A, Z, S] = carve(scratch, DR, MR, MR);
    T* Hs = scratch + DR + 2 * MR;  // the group's chunks, DR numbers each
    for (int64_t k = 0; k < g.count; ++k) load_rows<T, RB>(h0 + unit_of(k).offset, unit_of(k).n, s.D, Hs + k * DR);
    const T* ur = u + g.r * s.L * MD;
    const T* vr = v + g.r * s.L * MD;
    for (int64_t l = 0; l < s.L; ++l) {
      for (int64_t k = 0; k < g.count; ++k) {
        if (save && l > 0 && l % every == 0)
          store_rows<T, RB>(Hs + k * DR, unit_of(k).n, s.D, ckpt + (l / every - 1) * s.R * s.B * s.D + unit_of(k).offset);
        layer_forward<T, RB, DC>(ur + l * MD, vr + l * MD, Hs + k * DR, Z, S, A, s.M, s.D, c, a, act);
      }
    }
    for (int64_t k = 0; k < g.count; ++k) store_rows<T, RB>(Hs + k * DR, unit_of(k).n, s.D, out + unit_of(k).offset);
  });
}

template <typename T, int RB, int DC>
void backward_kernel(const T* h0, const T* ckpt, const T* u, const T* v, T* G_all, T* du, T* dv, const Shape& s,
                     T c, T a, int64_t act, int64_t every, bool need_u, bool need_v) {
  const int64_t units = s.R * s.chunks;
  const int64_t MD = s.M * s.D, DR = s.D * RB, MR = s.M * RB;
  const int64_t segs = (s.L + every - 1) / every;
  const int64_t k = std::min(every, s.L);
  // The weight gradients of a replica sum over its chunks, in chunk order: ∂w = p_0; ∂w += p_1; …
  // Where every thread has a replica of its own (or there is one thread), a replica's chunks are one
  // group that walks the layers back in lockstep and adds each chunk's share p_k to ∂w as it comes.
  // Otherwise (fewer replicas than threads, several chunks) the chunks run apart, each writes its share
  // into a private partial slot, and the slots are summed in chunk order afterwards: the same sums,
  // bit for bit. Segments are then taken in groups so that the partials stay under 2^18 numbers per
  // gradient (at least one segment): in cache between the walk and the sum (2^22 numbers, out of
  // cache, cost about 30 ms at A = (L 4096, B 64, D 16, M 64)), with few enough groups that the two
  // parallel regions per group cost little (with 2^16, A took 512 regions). Where one segment is
  // long the partials are not small: at B = (L 1024, B 256, D 32, M 32) with checkpoint_every = L,
  // 2^24 numbers per gradient; in lockstep one thread's backward there took 88-117 ms, not 152-177.
  const bool lockstep = s.chunks == 1 || s.R >= at::get_num_threads();
  const bool partial = !lockstep && (need_u || need_v);
  int64_t group = segs;
  if (partial) group = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, units * every * MD));
  group = std::min(group, segs);
  const int64_t group_layers = std::min(s.L, group * every);
  // The partial slots, one block for both gradients from the outputs' allocator (huge pages).
  const int64_t part_numbers = partial ? units * group_layers * MD : 0;
  auto parts_block = empty_output({(need_u ? part_numbers : 0) + (need_v ? part_numbers : 0)},
                                  torch::dtype(c10::CppTypeToScalarType<T>::value));
  T* part_u = need_u && partial ? parts_block.template data_ptr<T>() : nullptr;
  T* part_v = need_v && partial ? parts_block.template data_ptr<T>() + (need_u ? part_numbers : 0) : nullptr;
  const T ca = c * a;
  // A segment's recompute keeps each layer's σ(z) and σ'(z) where its two (k, M, RB) blocks fit in
  // half of a 1 MiB L2: the walk back then evaluates neither the product u·x nor σ again (with k = 1
  // there is no recompute, and nothing to keep). At the (512, 128, 10, 4, 16) study shape with
  // checkpoint_every = L, one thread's backward took 29.9 ms with them, 34.8 ms without (of h alone:
  // 18.4 against 25.5 ms).
  const bool keep = k > 1 && 2 * k * MR * int64_t(sizeof(T)) <= (int64_t(1) << 19);
  // The recompute must reproduce the forward's h bit for bit, and the walk back uses activate_pair's σ.
  // For tanh, relu and identity activate_pair's σ is activate's (tests/test_cpp_engine.py checks the
  // gradients against k = 1 bit for bit): one evaluation serves both. gelu's and silu's differ in the
  // last bit, so they evaluate σ twice.
  const bool pair_is_forward = act == kTanh || act == kRelu || act == kIdentity;
  const int64_t per_chunk = k * DR + DR + (keep ? 2 * k * MR : 0);  // the segment's x, g, (σ, σ')
  const int64_t shared = 3 * DR + 3 * MR + 2 * MD;

  for (int64_t g_hi = segs; g_hi > 0; g_hi -= group) {
    const int64_t g_lo = std::max<int64_t>(0, g_hi - group);
    const int64_t layer_lo = g_lo * every;
    const int64_t layer_hi = std::min(s.L, g_hi * every);
    for_each_group<T, RB>(s, lockstep ? s.chunks : 1, shared, per_chunk, [&](T* scratch, const Group& grp,
                                                                            auto unit_of) {
      const auto [A, Gt, Xt, Z, S, Q, share_u, share_v] = carve(scratch, DR, DR, DR, MR, MR, MR, MD, MD);
      auto xs = [&](int64_t q) { return scratch + shared + q * per_chunk; };  // chunk q's x_l
      auto gs = [&](int64_t q) { return xs(q) + k * DR; };                    // its g
      auto ss = [&](int64_t q) { return gs(q) + DR; };                        // its σ(z_l)
      auto ps = [&](int64_t q) { return ss(q) + k * MR; };                    // its σ'(z_l)
      const int64_t r = grp.r;
      const T* ur = u + r * s.L * MD;
      const T* vr = v + r * s.L * MD;
      for (int64_t q = 0; q < grp.count; ++q) load_rows<T, RB>(G_all + unit_of(q).offset, unit_of(q).n, s.D, gs(q));
      for (int64_t seg = g_hi - 1; seg >= g_lo; --seg) {
        const int64_t start = seg * every, stop = std::min(s.L, start + every);
        const T* checkpoint = seg == 0 ? h0 : ckpt + (seg - 1) * s.R * s.B * s.D;
        for (int64_t q = 0; q < grp.count; ++q) {
          T* Xs = xs(q);
          load_rows<T, RB>(checkpoint + unit_of(q).offset, unit_of(q).n, s.D, Xs);
          for (int64_t l = start; l < stop; ++l) {
            T* X = Xs + (l - start) * DR;
            if (keep) {  // the forward's layer (layer_forward's steps), keeping σ and σ'
              T* Zl = ps(q) + (l - start) * MR;
              T* Sl = ss(q) + (l - start) * MR;
              project<T, RB, DC, false>(ur + l * MD, X, Zl, s.M, s.D, a);
              if (pair_is_forward)
                activate_pair(act, Zl, Sl, MR);  // Sl = σ(z), Zl = σ'(z)
              else
                activate(act, Zl, Sl, MR);
              if (l + 1 < stop) {
                expand<T, RB, DC, false>(vr + l * MD, Sl, A, s.M, s.D);
                T* next = X + DR;
                std::copy(X, next, next);
                for (int64_t e = 0; e < DR; ++e) next[e] += c * A[e];
              }
              if (!pair_is_forward) activate_pair(act, Zl, Sl, MR);
            } else if (l + 1 < stop) {
              T* next = X + DR;
              std::copy(X, next, next);
              layer_forward<T, RB, DC>(ur + l * MD, vr + l * MD, next, Z, S, A, s.M, s.D, c, a, act);
            }
          }
        }
        for (int64_t l = stop - 1; l >= start; --l) {
          const T* ul = ur + l * MD;
          const T* vl = vr + l * MD;
          for (int64_t q = 0; q < grp.count; ++q) {
            const T* X = xs(q) + (l - start) * DR;
            T* G = gs(q);
            const T* Sv = S;  // σ(z)
            const T* Pv = Z;  // σ'(z)
            if (keep) {
              Sv = ss(q) + (l - start) * MR;
              Pv = ps(q) + (l - start) * MR;
            } else {
              project<T, RB, DC, false>(ul, X, Z, s.M, s.D, a);
              activate_pair(act, Z, S, MR);  // S = σ(z), Z = σ'(z)
            }
            project<T, RB, DC, false>(vl, G, Q, s.M, s.D, T(1));
            for (int64_t e = 0; e < MR; ++e) Q[e] *= Pv[e];  // P = σ'(z) ⊙ (v g)
            const int64_t unit = unit_of(q).index;
            // Where this chunk's share goes: its partial slot, ∂w itself (the first chunk), or a buffer
            // added to ∂w (the others, in chunk order).
            auto target = [&](T* part, T* grad, T* share) {
              if (partial) return part + (unit * group_layers + (l - layer_lo)) * MD;
              return q == 0 ? grad + (r * s.L + l) * MD : share;
            };
            auto add_share = [&](T* grad, const T* share) {
              if (partial || q == 0) return;
              T* dst = grad + (r * s.L + l) * MD;
              for (int64_t e = 0; e < MD; ++e) dst[e] += share[e];
            };
            if (need_v) {
              transpose_block<T, RB, DC>(G, s.D, Gt);
              outer<T, RB, DC>(Sv, Gt, target(part_v, dv, share_v), s.M, s.D, c);
              add_share(dv, share_v);
            }
            if (need_u) {
              transpose_block<T, RB, DC>(X, s.D, Xt);
              outer<T, RB, DC>(Q, Xt, target(part_u, du, share_u), s.M, s.D, ca);
              add_share(du, share_u);
            }
            expand<T, RB, DC, false>(ul, Q, A, s.M, s.D);
            for (int64_t e = 0; e < DR; ++e) G[e] += ca * A[e];
          }
        }
      }
      for (int64_t q = 0; q < grp.count; ++q) store_rows<T, RB>(gs(q), unit_of(q).n, s.D, G_all + unit_of(q).offset);
    });
    if (partial) {
      // Sum the chunks' partials in chunk order: one (replica, layer, unit j) row of D numbers per task.
      const int64_t layers = layer_hi - layer_lo;
      const int64_t rows = s.R * layers * s.M;
      for (int which = 0; which < 2; ++which) {
        if ((which == 0 && !need_u) || (which == 1 && !need_v)) continue;
        const T* parts = which == 0 ? part_u : part_v;
        T* dst_all = which == 0 ? du : dv;
        at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) {
            const int64_t r = row / (layers * s.M), rest = row % (layers * s.M);
            const int64_t l = rest / s.M, j = rest % s.M;
            T* dst = dst_all + ((r * s.L + layer_lo + l) * s.M + j) * s.D;
            const T* first = parts + ((r * s.chunks) * group_layers + l) * MD + j * s.D;
            std::copy(first, first + s.D, dst);
            for (int64_t chunk = 1; chunk < s.chunks; ++chunk) {
              const T* src = parts + ((r * s.chunks + chunk) * group_layers + l) * MD + j * s.D;
              for (int64_t d = 0; d < s.D; ++d) dst[d] += src[d];
            }
          }
        });
      }
    }
  }
}

// Forward mode (docs/engines.md): with z = a·u h,
//   ż = a·(u̇ h + u ḣ),   ḣ_l = ḣ_{l−1} + c·Σ_j [v̇_j σ(z_j) + v_j σ'(z_j) ż_j],
// in the forward's layer loop; each product pair (u on h and ḣ, v on σ and σ'ż) shares its pass
// over the weights. Nothing L-sized is kept.
template <typename T, int RB, int DC>
void jvp_kernel(const T* h0, const T* u, const T* v, const T* h0d, const T* ud, const T* vd, T* out, T* outd,
                const Shape& s, T c, T a, int64_t act) {
  const int64_t DR = s.D * RB, MR = s.M * RB, MD = s.M * s.D;
  for_each_group<T, RB>(s, chunks_per_group(s), 2 * DR + 3 * MR, 2 * DR, [&](T* scratch, const Group& g, auto unit_of) {
    const auto [A, Ad, Z, Zd, S] = carve(scratch, DR, DR, MR, MR, MR);
    T* Hs = scratch + 2 * DR + 3 * MR;  // per chunk: H, then Ḣ
    for (int64_t k = 0; k < g.count; ++k) {
      load_rows<T, RB>(h0 + unit_of(k).offset, unit_of(k).n, s.D, Hs + 2 * k * DR);
      load_rows<T, RB>(h0d + unit_of(k).offset, unit_of(k).n, s.D, Hs + (2 * k + 1) * DR);
    }
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t w = (g.r * s.L + l) * MD;
      for (int64_t k = 0; k < g.count; ++k) {
        T* H = Hs + 2 * k * DR;
        T* Hd = H + DR;
        project_pair<T, RB, DC>(u + w, ud + w, H, Hd, Z, Zd, s.M, s.D, a);  // z, ż
        activate_pair(act, Z, S, MR);                                       // S = σ(z), Z = σ'(z)
        for (int64_t e = 0; e < MR; ++e) Zd[e] *= Z[e];                     // σ'(z) ż
        expand_pair<T, RB, DC>(v + w, vd + w, S, Zd, A, Ad, s.M, s.D);       // Σ v σ, Σ v̇ σ + v σ' ż
        for (int64_t e = 0; e < DR; ++e) {
          H[e] += c * A[e];
          Hd[e] += c * Ad[e];
        }
      }
    }
    for (int64_t k = 0; k < g.count; ++k) {
      store_rows<T, RB>(Hs + 2 * k * DR, unit_of(k).n, s.D, out + unit_of(k).offset);
      store_rows<T, RB>(Hs + (2 * k + 1) * DR, unit_of(k).n, s.D, outd + unit_of(k).offset);
    }
  });
}

// Calls body.template operator()<RB, DC>() with the row block and, for float32, the D specialization
// for this shape (float64 takes the general path: it is the accuracy engine, and fewer instances
// build faster).
template <typename T, typename F>
void dispatch_shape(int64_t B, int64_t D, F&& body) {
  auto with_rb = [&](auto rb) {
    constexpr int RB = decltype(rb)::value;
    if constexpr (std::is_same_v<T, float>) {
      switch (D) {
        case 4: body.template operator()<RB, 4>(); return;
        case 8: body.template operator()<RB, 8>(); return;
        case 16: body.template operator()<RB, 16>(); return;
        case 32: body.template operator()<RB, 32>(); return;
        default: break;
      }
    }
    body.template operator()<RB, 0>();
  };
  if (B <= 8)
    with_rb(std::integral_constant<int, 8>{});
  else
    with_rb(std::integral_constant<int, 16>{});
}

int64_t row_block(int64_t B) { return B <= 8 ? 8 : 16; }

void check_inputs(const torch::Tensor& h0, const torch::Tensor& u, const torch::Tensor& v, int64_t act) {
  TORCH_CHECK(h0.device().is_cpu() && u.device().is_cpu() && v.device().is_cpu(),
              "the C++ engine takes CPU tensors");
  TORCH_CHECK(h0.scalar_type() == at::kFloat || h0.scalar_type() == at::kDouble,
              "the C++ engine takes float32 or float64 h; got ", h0.scalar_type());
  TORCH_CHECK(u.scalar_type() == h0.scalar_type() && v.scalar_type() == h0.scalar_type(),
              "the C++ engine takes u and v in h's dtype ", h0.scalar_type(), "; got ", u.scalar_type());
  TORCH_CHECK(h0.dim() == 3 && u.dim() == 4 && v.sizes() == u.sizes() && h0.size(0) == u.size(0) &&
                  h0.size(2) == u.size(3),
              "the C++ engine takes h (R, B, D) and u, v (R, L, M, D)");
  TORCH_CHECK(act >= 0 && act <= 4, "unknown activation code ", act);
}

Shape shape_of(const torch::Tensor& h0, const torch::Tensor& u) {
  Shape s{h0.size(0), h0.size(1), h0.size(2), u.size(1), u.size(2), 0};
  s.chunks = (s.B + row_block(s.B) - 1) / row_block(s.B);
  return s;
}

std::vector<torch::Tensor> stack_forward(torch::Tensor h0, torch::Tensor u, torch::Tensor v, double c, double a,
                                         int64_t act, int64_t every, bool save) {
  check_inputs(h0, u, v, act);
  TORCH_CHECK(every >= 1, "every must be >= 1");
  h0 = h0.contiguous(), u = u.contiguous(), v = v.contiguous();
  const Shape s = shape_of(h0, u);
  auto out = torch::empty_like(h0);
  const int64_t count = (s.L + every - 1) / every - 1;
  auto ckpt = save ? empty_output({count, s.R, s.B, s.D}, h0.options()) : h0.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "deepres_cpp_forward", [&] {
    dispatch_shape<scalar_t>(s.B, s.D, [&]<int RB, int DC>() {
      forward_kernel<scalar_t, RB, DC>(h0.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                       out.data_ptr<scalar_t>(), save ? ckpt.data_ptr<scalar_t>() : nullptr, s,
                                       scalar_t(c), scalar_t(a), act, every, save);
    });
  });
  return {out, ckpt};
}

std::vector<torch::Tensor> stack_backward(torch::Tensor grad_out, torch::Tensor h0, torch::Tensor ckpt,
                                          torch::Tensor u, torch::Tensor v, double c, double a, int64_t act,
                                          int64_t every, bool need_h, bool need_u, bool need_v) {
  check_inputs(h0, u, v, act);
  TORCH_CHECK(every >= 1, "every must be >= 1");
  h0 = h0.contiguous(), u = u.contiguous(), v = v.contiguous(), ckpt = ckpt.contiguous();
  const Shape s = shape_of(h0, u);
  TORCH_CHECK(ckpt.numel() == ((s.L + every - 1) / every - 1) * s.R * s.B * s.D,
              "checkpoints do not match the shapes and every");
  auto grad_h = grad_out.to(h0.scalar_type()).contiguous().clone();
  auto grad_u = need_u ? empty_output(u.sizes(), u.options()) : u.new_empty({0});
  auto grad_v = need_v ? empty_output(v.sizes(), v.options()) : v.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "deepres_cpp_backward", [&] {
    dispatch_shape<scalar_t>(s.B, s.D, [&]<int RB, int DC>() {
      backward_kernel<scalar_t, RB, DC>(h0.data_ptr<scalar_t>(), ckpt.numel() ? ckpt.data_ptr<scalar_t>() : nullptr,
                                        u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(),
                                        need_u ? grad_u.data_ptr<scalar_t>() : nullptr,
                                        need_v ? grad_v.data_ptr<scalar_t>() : nullptr, s, scalar_t(c),
                                        scalar_t(a), act, every, need_u, need_v);
    });
  });
  if (!need_h) grad_h = h0.new_empty({0});
  return {grad_h, grad_u, grad_v};
}

std::vector<torch::Tensor> stack_jvp(torch::Tensor h0, torch::Tensor u, torch::Tensor v, torch::Tensor h0d,
                                     torch::Tensor ud, torch::Tensor vd, double c, double a, int64_t act) {
  check_inputs(h0, u, v, act);
  check_inputs(h0d, ud, vd, act);
  TORCH_CHECK(h0d.sizes() == h0.sizes() && ud.sizes() == u.sizes() && h0d.scalar_type() == h0.scalar_type(),
              "tangents must have the shapes and dtype of their primals");
  h0 = h0.contiguous(), u = u.contiguous(), v = v.contiguous();
  h0d = h0d.contiguous(), ud = ud.contiguous(), vd = vd.contiguous();
  const Shape s = shape_of(h0, u);
  auto out = torch::empty_like(h0);
  auto outd = torch::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "deepres_cpp_jvp", [&] {
    dispatch_shape<scalar_t>(s.B, s.D, [&]<int RB, int DC>() {
      jvp_kernel<scalar_t, RB, DC>(h0.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                   h0d.data_ptr<scalar_t>(), ud.data_ptr<scalar_t>(), vd.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), outd.data_ptr<scalar_t>(), s, scalar_t(c),
                                   scalar_t(a), act);
    });
  });
  return {out, outd};
}

// σ over a tensor with the engine's own activation code (for measuring the approximations).
torch::Tensor activation_values(torch::Tensor z, int64_t act) {
  z = z.contiguous();
  auto s = torch::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "deepres_cpp_activation", [&] {
    activate(act, z.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), z.numel());
  });
  return s;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &stack_forward, "deepres stack forward (h_L, checkpoints)");
  m.def("backward", &stack_backward, "deepres stack backward (grad_h0, grad_u, grad_v)");
  m.def("jvp", &stack_jvp, "deepres stack forward-mode derivative (h_L, h_L_dot)");
  m.def("activation", &activation_values, "the engine's sigma(z)");
}
