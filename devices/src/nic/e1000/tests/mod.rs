//! Host tests of the e1000: registers one by one ([`registers`]), the card driven as
//! Linux's e1000 driver drives it ([`linux`], [`offload`]), and bad input
//! ([`robustness`]), all against [`harness`]'s guest.

mod harness;
mod linux;
mod offload;
mod registers;
mod robustness;
