// DPI-C side of the testbench: the DRAM as a byte vector, and the process exit code.
// (rtl/tb/tb_top.sv calls these; see docs/rtl.md, "Testbench contract".)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "svdpi.h"

namespace {
std::vector<uint8_t> dram;
int64_t input_len = 0;
int64_t highest_written = -1;
}  // namespace

extern "C" {

// Allocate nbytes of zeroed DRAM and copy the image file (if any) to address 0.
// Returns 0 on success, -1 when the image cannot be read or exceeds the DRAM.
int dram_init(const char* path, long long nbytes) {
  dram.assign(static_cast<size_t>(nbytes), 0);
  input_len = 0;
  highest_written = -1;
  if (!path || !path[0]) return 0;
  FILE* f = std::fopen(path, "rb");
  if (!f) return -1;
  size_t n = std::fread(dram.data(), 1, dram.size(), f);
  int extra = std::fgetc(f);
  std::fclose(f);
  if (extra != EOF) return -1;
  input_len = static_cast<int64_t>(n);
  return 0;
}

// Four bytes from addr, little-endian; bytes beyond the DRAM read as 0.
int dram_rd32(long long addr) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    long long a = addr + i;
    if (a >= 0 && a < static_cast<long long>(dram.size())) v |= static_cast<uint32_t>(dram[a]) << (8 * i);
  }
  return static_cast<int>(v);
}

// One byte; writes beyond the DRAM are dropped (a device checks bounds at load).
void dram_wr8(long long addr, int data) {
  if (addr < 0 || addr >= static_cast<long long>(dram.size())) return;
  dram[addr] = static_cast<uint8_t>(data);
  if (addr > highest_written) highest_written = addr;
}

// DRAM [0, max(input image length, highest byte written + 1)) to a file; 0 on success.
int dram_dump(const char* path) {
  int64_t end = input_len > highest_written + 1 ? input_len : highest_written + 1;
  FILE* f = std::fopen(path, "wb");
  if (!f) return -1;
  size_t n = std::fwrite(dram.data(), 1, static_cast<size_t>(end), f);
  std::fclose(f);
  return n == static_cast<size_t>(end) ? 0 : -1;
}

void tb_exit(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);
}
}
