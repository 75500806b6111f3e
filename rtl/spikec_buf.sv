// A banked on-chip buffer (INP, WGT, ACC, VEC or SCL): DEPTH elements of EW bits,
// element e in bank e % NB at row e / NB. Every port moves up to NB consecutive
// elements from any start element in one cycle, because NB consecutive elements fall
// in NB different banks; the rotation muxes below map element offsets to banks.
//
// One write port (the core arbitrates it between the LOAD engine and the compute
// module) and NR read ports of one-cycle latency (port 0 is the STORE engine's, the
// others the compute module's), so each bank is a 1W-nR block RAM (spikec_ram).
module spikec_buf #(
    parameter int EW = 8,
    parameter int DEPTH = 1024,
    parameter int NB = 8,
    parameter int NR = 2,
    parameter int AW = $clog2(DEPTH),
    parameter int CW = $clog2(NB) + 1
) (
    input  logic                clk,
    // write: elements w_data[e] (e < w_cnt) to w_base + e
    input  logic                w_en,
    input  logic [AW-1:0]       w_base,
    input  logic [CW-1:0]       w_cnt,
    input  logic [NB*EW-1:0]    w_data,
    // read port p: r_data[p][e] = element r_base[p] + e, one cycle after r_base
    input  logic [NR*AW-1:0]    r_base,
    output logic [NR*NB*EW-1:0] r_data
);
  localparam int BW = $clog2(NB);
  localparam int RD = DEPTH / NB;
  localparam int RAW = (RD > 1) ? $clog2(RD) : 1;

  logic [NR*BW-1:0] r_rot_q;  // low bits of each read base, for the output rotation
  logic [NR*NB*EW-1:0] bank_rdata;  // port p, bank b at (p*NB + b)*EW (powers of two: no multiplier)

  for (genvar b = 0; b < NB; b++) begin : g_bank
    logic [BW-1:0] w_off;
    logic [AW-1:0] w_elem;
    logic [NR*RAW-1:0] raddr;
    logic bank_we;
    logic [NR*EW-1:0] bank_out;
    for (genvar p = 0; p < NR; p++) begin : g_out
      assign bank_rdata[(p*NB+b)*EW+:EW] = bank_out[p*EW+:EW];
    end
    assign w_off = BW'(b) - w_base[BW-1:0];
    assign w_elem = w_base + AW'(w_off);
    assign bank_we = w_en && (CW'(w_off) < w_cnt);
    for (genvar p = 0; p < NR; p++) begin : g_port
      logic [BW-1:0] r_off;
      logic [AW-1:0] r_elem;
      assign r_off = BW'(b) - r_base[p*AW+:BW];
      assign r_elem = r_base[p*AW+:AW] + AW'(r_off);
      assign raddr[p*RAW+:RAW] = RAW'(r_elem >> BW);
    end
    spikec_ram #(
        .W (EW),
        .D (RD),
        .NR(NR)
    ) u_ram (
        .clk  (clk),
        .we   (bank_we),
        .waddr(RAW'(w_elem >> BW)),
        .wdata(w_data[w_off*EW+:EW]),
        .raddr(raddr),
        .rdata(bank_out)
    );
  end

  always_ff @(posedge clk) begin
    for (int p = 0; p < NR; p++) r_rot_q[p*BW+:BW] <= r_base[p*AW+:BW];
  end

  always_comb begin
    logic [BW-1:0] bk;
    for (int p = 0; p < NR; p++) begin
      for (int e = 0; e < NB; e++) begin
        bk = BW'(e) + r_rot_q[p*BW+:BW];  // wraps mod NB
        r_data[(p*NB+e)*EW+:EW] = bank_rdata[(p*NB+bk)*EW+:EW];
      end
    end
  end
endmodule
