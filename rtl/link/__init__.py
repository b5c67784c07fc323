"""moeforge.rtl.link: the device side of the host link (framing, CRC-32, retransmission, HELLO;
docs/protocol.md) and the UART PHY boards carry it on."""
