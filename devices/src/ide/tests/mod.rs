//! Host tests of the IDE controller: register by register, and as SeaBIOS and Linux drive it.

mod harness;
mod linux;
mod seabios;
