//! Host tests of the RTL8139: register by register, as Linux's 8139too drives it, and
//! against malformed slots, rings and random traffic.

mod harness;
mod linux;
mod registers;
mod robustness;
