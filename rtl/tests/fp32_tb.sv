// Vector testbench for rtl/fp32.sv (package spikec_fp32), driven by
// tests/test_rtl_fp32.py.
//
// fp32_ops applies function `op` to the 32-bit operands a and b, combinationally, with
// the qualified calls other RTL uses. It is plain synthesizable code, so the same module
// also goes through Yosys 0.23 (`read_verilog -sv rtl/fp32.sv rtl/tests/fp32_tb.sv;
// prep -top fp32_ops`; Yosys defines SYNTHESIS, which hides the testbench below), and
// the netlist Yosys writes can replace it here (+define+FP32_OPS_NETLIST).
//
// fp32_tb reads "op a b" lines (hex) from +in=FILE and writes one hex result per line to
// +out=FILE. Booleans come back as 0/1, signed int32 results as their two's-complement
// bits.

`ifndef FP32_OPS_NETLIST
/* verilator lint_off DECLFILENAME */  // two modules in one file, on purpose
module fp32_ops (
    input logic [7:0] op,
    input logic [31:0] a,
    input logic [31:0] b,
    output logic [31:0] y
);
  // Function codes; keep in step with OPS in tests/test_rtl_fp32.py. One wire per
  // function so Yosys elaborates each call once, outside any branch.
  logic [31:0] r_add, r_sub, r_mul, r_div, r_sqrt, r_from_i32, r_rint_clamp, r_abs;
  logic [31:0] r_max, r_rint, r_to_i32, r_ldexp, r_exp;
  logic r_is_nan, r_is_finite, r_gt;
  assign r_add = spikec_fp32::f32_add(a, b);
  assign r_sub = spikec_fp32::f32_sub(a, b);
  assign r_mul = spikec_fp32::f32_mul(a, b);
  assign r_div = spikec_fp32::f32_div(a, b);
  assign r_sqrt = spikec_fp32::f32_sqrt(a);
  assign r_from_i32 = spikec_fp32::f32_from_i32(a);
  assign r_rint_clamp = spikec_fp32::f32_rint_clamp(a, b);
  assign r_abs = spikec_fp32::f32_abs(a);
  assign r_is_nan = spikec_fp32::f32_is_nan(a);
  assign r_is_finite = spikec_fp32::f32_is_finite(a);
  assign r_gt = spikec_fp32::f32_gt(a, b);
  assign r_max = spikec_fp32::f32_max(a, b);
  assign r_rint = spikec_fp32::f32_rint(a);
  assign r_to_i32 = spikec_fp32::f32_to_i32_exact(a);
  assign r_ldexp = spikec_fp32::f32_ldexp(a, b);
  assign r_exp = spikec_fp32::f32_exp(a);
  always_comb begin
    case (op)
      8'd0: y = r_add;
      8'd1: y = r_sub;
      8'd2: y = r_mul;
      8'd3: y = r_div;
      8'd4: y = r_sqrt;
      8'd5: y = r_from_i32;
      8'd6: y = r_rint_clamp;
      8'd7: y = r_abs;
      8'd8: y = {31'd0, r_is_nan};
      8'd9: y = {31'd0, r_is_finite};
      8'd10: y = {31'd0, r_gt};
      8'd11: y = r_max;
      8'd12: y = r_rint;
      8'd13: y = r_to_i32;
      8'd14: y = r_ldexp;
      8'd15: y = r_exp;
      default: y = 32'hdeadbeef;
    endcase
  end
endmodule
/* verilator lint_on DECLFILENAME */
`endif

`ifndef SYNTHESIS
module fp32_tb;
  string in_path, out_path;
  integer fin, fout, got, count;
  logic [7:0] op;
  logic [31:0] a, b, y;

  fp32_ops dut (.op(op), .a(a), .b(b), .y(y));

  initial begin
    if (!$value$plusargs("in=%s", in_path) || !$value$plusargs("out=%s", out_path))
      $fatal(1, "usage: +in=VECTORS +out=RESULTS");
    fin = $fopen(in_path, "r");
    if (fin == 0) $fatal(1, "cannot open %s", in_path);
    fout = $fopen(out_path, "w");
    if (fout == 0) $fatal(1, "cannot open %s", out_path);
    count = 0;
    got = $fscanf(fin, "%h %h %h\n", op, a, b);
    while (got == 3) begin
      #1;  // let the combinational fp32_ops settle
      $fwrite(fout, "%h\n", y);
      count = count + 1;
      got = $fscanf(fin, "%h %h %h\n", op, a, b);
    end
    $fclose(fin);
    $fclose(fout);
    $display("fp32_tb: %0d vectors", count);
    $finish;
  end
endmodule
`endif
