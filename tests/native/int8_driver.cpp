// Standalone driver for kernels/native/int8_attention.cpp: the same source, linked into a program, so a back
// end can run where there is no Python with torch (an aarch64 build under qemu-user in the tests).
//
//   int8_driver run IN OUT      IN: int64 bh, n_q, n_k, d, q_rows, k_rows, causal, threads; then q, k, v as
//                               float32 [bh, n, d]. OUT: float32 [bh, n_q, d]. Prints the back end's name.
//   int8_driver linear IN OUT   IN: int64 m, k_in, n_out, threads; then x [m, k_in], w [k_in, n_out] float32.
//                               OUT: y = x w, float32 [m, n_out], through the packed int8 linear.
//   int8_driver bench BH L D THREADS SECONDS
//                               times calls on N(0,1)-like inputs (a development aid: qemu timings mean nothing)
#include "../../kernels/native/int8_attention.cpp"

#include <chrono>
#include <cstdio>
#include <random>
#include <string>

static int run(const char* in_path, const char* out_path) {
  FILE* in = std::fopen(in_path, "rb");
  if (!in) return 10;
  int64_t hdr[8];
  if (std::fread(hdr, sizeof(int64_t), 8, in) != 8) return 11;
  const int64_t bh = hdr[0], nq = hdr[1], nk = hdr[2], d = hdr[3];
  std::vector<float> q(bh * nq * d), k(bh * nk * d), v(bh * nk * d), out(bh * nq * d);
  if (std::fread(q.data(), 4, q.size(), in) != q.size() || std::fread(k.data(), 4, k.size(), in) != k.size() ||
      std::fread(v.data(), 4, v.size(), in) != v.size())
    return 12;
  std::fclose(in);
  const int rc = attn_int8_forward(q.data(), k.data(), v.data(), out.data(), bh, nq, nk, d, hdr[4], hdr[5],
                                   static_cast<int>(hdr[6]), static_cast<int>(hdr[7]), 1.0f / std::sqrt(float(d)));
  if (rc) {
    std::fprintf(stderr, "%s\n", attn_int8_error(rc));
    return 20 + rc;
  }
  FILE* o = std::fopen(out_path, "wb");
  if (!o || std::fwrite(out.data(), 4, out.size(), o) != out.size()) return 13;
  std::fclose(o);
  std::printf("%s\n", attn_int8_backend());
  return 0;
}

static int linear_run(const char* in_path, const char* out_path) {
  FILE* in = std::fopen(in_path, "rb");
  if (!in) return 10;
  int64_t hdr[4];
  if (std::fread(hdr, sizeof(int64_t), 4, in) != 4) return 11;
  const int64_t m = hdr[0], k = hdr[1], n = hdr[2];
  std::vector<float> x(m * k), w(k * n), y(m * n);
  if (std::fread(x.data(), 4, x.size(), in) != x.size() || std::fread(w.data(), 4, w.size(), in) != w.size())
    return 12;
  std::fclose(in);
  void* packed = std::aligned_alloc(64, (attn_int8_linear_bytes(k, n) + 63) / 64 * 64);
  int rc = attn_int8_linear_pack(w.data(), k, n, packed);
  if (!rc) rc = attn_int8_linear(x.data(), m, k, packed, y.data(), n, static_cast<int>(hdr[3]));
  std::free(packed);
  if (rc) {
    std::fprintf(stderr, "%s\n", attn_int8_error(rc));
    return 20 + rc;
  }
  FILE* o = std::fopen(out_path, "wb");
  if (!o || std::fwrite(y.data(), 4, y.size(), o) != y.size()) return 13;
  std::fclose(o);
  std::printf("%s\n", attn_int8_backend());
  return 0;
}

static int bench(int bh, int n, int d, int threads, double seconds) {
  std::mt19937 gen(0);
  std::normal_distribution<float> dist;
  std::vector<float> q(size_t(bh) * n * d), k(q.size()), v(q.size()), out(q.size());
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = dist(gen);
  double best = 1e30;
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  // SECONDS < 0: exactly -SECONDS calls (for cycle counts under `perf stat`).
  while (seconds < 0 ? calls < -seconds
                     : std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    attn_int8_forward(q.data(), k.data(), v.data(), out.data(), bh, n, n, d, 1, 1, 0, threads, 0.125f);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ++calls;
  }
  std::printf("%s bh=%d L=%d d=%d threads=%d: best %.3f ms over %d calls\n", attn_int8_backend(), bh, n, d,
              threads, best * 1e3, calls);
  return 0;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "run" && argc == 4) return run(argv[2], argv[3]);
  if (mode == "linear" && argc == 4) return linear_run(argv[2], argv[3]);
  if (mode == "bench" && argc == 7)
    return bench(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]), std::atof(argv[6]));
  std::fprintf(stderr, "usage: int8_driver run IN OUT | linear IN OUT | bench BH L D THREADS SECONDS\n");
  return 2;
}
