// One bank of an on-chip buffer: D words of W bits, one write port and NR registered
// read ports (read-first: a read in the cycle of a write to the same word sees the old
// word). This is the inferable block-RAM template: Yosys maps a 1W-nR memory to n
// simple-dual-port block RAMs that share the write (ECP5 DP16KD, Xilinx RAMB).
module spikec_ram #(
    parameter int W = 8,
    parameter int D = 16,
    parameter int NR = 1,
    parameter int AW = (D > 1) ? $clog2(D) : 1
) (
    input  logic             clk,
    input  logic             we,
    input  logic [AW-1:0]    waddr,
    input  logic [W-1:0]     wdata,
    input  logic [NR*AW-1:0] raddr,
    output logic [NR*W-1:0]  rdata
);
  logic [W-1:0] mem[0:D-1];

  always_ff @(posedge clk) begin
    if (we) mem[waddr] <= wdata;
  end

  for (genvar p = 0; p < NR; p++) begin : g_rd
    always_ff @(posedge clk) begin
      rdata[p*W+:W] <= mem[raddr[p*AW+:AW]];
    end
  end
endmodule
