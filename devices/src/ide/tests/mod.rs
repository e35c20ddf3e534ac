//! Host tests of the IDE controller: register by register, and as SeaBIOS and Linux drive it.

mod atapi_commands;
mod disk_data;
mod dma;
mod harness;
mod linux;
mod registers;
mod robustness;
mod seabios;
