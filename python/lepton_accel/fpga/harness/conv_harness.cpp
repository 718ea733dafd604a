// C++ harness around a Verilator model of the lepton_accel conv2d core (AXIConv2d).
// Common parts (model, registers, reset, the stream engine): lx_harness.h.

#define LX_IN0 x
#include "lx_harness.h"

extern "C" {

// Run one conv2d job: optionally write CTRL (start_addr/start_data, e.g. START) while
// the streams are already presented, load the images on x, stream the weights (b) and
// bias tiles, and collect the output tiles on c.
//
// x: x_beats beats of x_bytes, tlast every x_frame beats (one image = ceil(H*W*C/XL)
// beats). b: tlast every b_frame beats (K beats per tile). bias: tlast on every beat.
// c: room for c_beats beats; c_last[i] receives beat i's tlast. Pauses, idle limit,
// tail and the result as for lx_stream of the matmul harness: the cycles run, or a
// negated LX_ERR_* (LX_ERR_TIMEOUT after idle_limit cycles without any handshake).
int64_t lx_conv_stream(void* h, int start_en, uint32_t start_addr, uint32_t start_data,
                       const uint8_t* x, uint64_t x_beats, int x_bytes, uint64_t x_frame,
                       const uint8_t* b, uint64_t b_beats, int b_bytes, uint64_t b_frame,
                       const uint8_t* bias, uint64_t bias_beats, int bias_bytes,
                       uint8_t* c, uint8_t* c_last, uint64_t c_beats, int c_bytes,
                       uint32_t pause_in, uint32_t pause_out, uint64_t seed,
                       uint64_t idle_limit, uint64_t tail, uint64_t* c_got) {
    LxSource src[3] = {{x, x_beats, x_bytes, x_frame},
                       {b, b_beats, b_bytes, b_frame},
                       {bias, bias_beats, bias_bytes, 1}};
    return lx_transfer(static_cast<LxDevice*>(h), src,
                       LxStartWrite{start_en != 0, start_addr, start_data}, c, c_last,
                       c_beats, c_bytes, pause_in, pause_out, seed, idle_limit, tail, c_got);
}

}  // extern "C"
