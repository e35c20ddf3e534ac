//! An in-memory Xen for host tests: being written.
