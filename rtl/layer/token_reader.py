"""`TokenReader`: token indices in, the tokens' words out of a token buffer, as a stream.

The layer core keeps a batch in a token buffer (``t_max`` tokens of ``slices`` words each, token
``t`` at words ``t·slices .. t·slices + slices - 1``) and hands tokens to the router and the
expert engines in different orders: ``0 .. T-1`` for the router and the shared expert, each
expert's dispatch list for the routed engine. This unit turns a stream of token indices into
the stream of those tokens' words through one synchronous read port of the buffer.

Interface
---------
``i_token`` (in stream): ``{token}``, one beat per token; taken with the token's final word read.

``o_x`` (out stream): ``{data: word, last}``, ``slices`` beats per token in word order, ``last``
on the token's final beat (the `ExpertFFN` ``i_x`` and `Router` ``i_tokens`` format).

``rd`` (out ``addr``, ``en``; in ``data``): the buffer's read port, latency 1, data held while
``en`` is low (an `amaranth.lib.memory` read port).

Timing: one beat per cycle while ``o_x`` is ready; the read port's data register is the output
stage (``en = ~o_x.valid | o_x.ready``), so a stalled beat keeps its data without a copy.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.checks import check_int
from ..datapath.mac_array import index_shape

__all__ = ["TokenReader"]


class TokenReader(wiring.Component):
    """Token indices → the tokens' buffer words (see the module docstring).

    Parameters
    ----------
    slices : int
        Words per token, in [1, 65536].
    t_max : int
        Tokens in the buffer, in [1, 4096].
    word : shape-castable
        One buffer word (e.g. ``weight_word(cols)``).
    """

    def __init__(self, *, slices: int, t_max: int, word, src_loc_at: int = 0):
        check_int("slices", slices, 1, 1 << 16)
        check_int("t_max", t_max, 1, 4096)
        self.slices, self.t_max, self.word = slices, t_max, word
        self.addr_shape = index_shape(t_max * slices)
        self.token_layout = data.StructLayout({"token": index_shape(t_max)})
        self.x_layout = data.StructLayout({"data": word, "last": 1})
        super().__init__({
            "i_token": In(stream.Signature(self.token_layout)),
            "o_x": Out(stream.Signature(self.x_layout)),
            "rd": Out(wiring.Signature({"addr": Out(self.addr_shape), "en": Out(1),
                                        "data": In(word)})),
        }, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        S = self.slices
        it, ox, rd = self.i_token, self.o_x, self.rd
        last = Signal(name="last")                  # the beat in the read register is a last one
        en = Signal(name="en")
        m.d.comb += en.eq(~ox.valid | ox.ready)
        token = it.payload.token
        if S > 1:
            s = Signal(index_shape(S), name="slice")
            at_last = Signal(name="at_last")
            m.d.comb += [at_last.eq(s == S - 1),
                         rd.addr.eq((token * S + s)[:self.addr_shape.width])]
            with m.If(en & it.valid):
                m.d.sync += s.eq(Mux(at_last, 0, s + 1))
        else:
            at_last = 1
            m.d.comb += rd.addr.eq(token)
        m.d.comb += [rd.en.eq(en), it.ready.eq(en & at_last),
                     ox.payload.data.eq(rd.data), ox.payload.last.eq(last)]
        with m.If(en):
            m.d.sync += [ox.valid.eq(it.valid), last.eq(at_last)]
        return m
