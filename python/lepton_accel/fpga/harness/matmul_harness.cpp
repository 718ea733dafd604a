// C++ harness around a Verilator model of the lepton_accel matmul core (AXIMatmul).
// Common parts (model, registers, reset, the stream engine): lx_harness.h.

#define LX_IN0 a
#include "lx_harness.h"

extern "C" {

// Stream one job's beats through the core.
//
// a, b: a_beats / b_beats beats of a_bytes / b_bytes each, back to back; tlast is set on
// every `frame_beats`-th beat (K beats per tile). bias: bias_beats beats, tlast on each.
// c: room for c_beats beats of c_bytes; c_last[i] receives beat i's tlast.
// Runs until every input beat was accepted and c_beats output beats were received, then
// keeps the output ready for `tail` more cycles to catch extra beats (overflow).
// pause_in / pause_out: per-mille chance that a source withholds tvalid / the sink drops
// tready on a cycle (0 = full rate); seed seeds those pauses.
// `idle_limit`: give up after this many cycles without any handshake.
// Returns the number of cycles run (>= 0) or a negated error code; *c_got receives the
// number of output beats received.
int64_t lx_stream(void* h,
                  const uint8_t* a, uint64_t a_beats, int a_bytes,
                  const uint8_t* b, uint64_t b_beats, int b_bytes,
                  uint64_t frame_beats,
                  const uint8_t* bias, uint64_t bias_beats, int bias_bytes,
                  uint8_t* c, uint8_t* c_last, uint64_t c_beats, int c_bytes,
                  uint32_t pause_in, uint32_t pause_out, uint64_t seed,
                  uint64_t idle_limit, uint64_t tail, uint64_t* c_got) {
    if (frame_beats == 0) return -LX_ERR_ARGS;
    LxSource src[3] = {{a, a_beats, a_bytes, frame_beats},
                       {b, b_beats, b_bytes, frame_beats},
                       {bias, bias_beats, bias_bytes, 1}};
    return lx_transfer(static_cast<LxDevice*>(h), src, LxStartWrite{false, 0, 0}, c, c_last,
                       c_beats, c_bytes, pause_in, pause_out, seed, idle_limit, tail, c_got);
}

}  // extern "C"
