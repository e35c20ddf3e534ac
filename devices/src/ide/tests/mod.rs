//! Host tests of the IDE controller.
