"""moeforge.spec: the device's specification as plain Python, the one source of every number
the golden model, the RTL and the host runtime share.

Modules: `protocol` (the command and response packets, the link's frames and HELLO report),
`image` (the weight image: address maps, word layouts, and the words a quantised layer
becomes) and `arith` (the arithmetic's widths and formats, docs/arithmetic.md).

The rule of this package: it imports nothing of the project but `moeforge.config` and the leaf
modules `moeforge.checks` and `moeforge.errors`, and neither torch, numpy nor Amaranth, so that
every other layer can read it (docs/architecture.md).
"""
